// Compile-time check of ember_opencl.h against the official OpenCL headers, when they are
// installed (Debian: opencl-c-headers; scripts/setup --opencl installs it, so CI runs this
// check). A mismatch fails the build here rather than corrupting calls at run time. Without
// the headers this file compiles to nothing.
#if defined(__has_include)
#if __has_include(<CL/cl.h>)

#define CL_TARGET_OPENCL_VERSION 120
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS  // clCreateCommandQueue: the 1.2 call Ember uses
#include <CL/cl.h>
#include "ember_opencl.h"

#define SAME_TYPE(a, b) _Static_assert(__builtin_types_compatible_p(a, b), #a " differs from " #b)
#define SAME_FUNCTION(name) SAME_TYPE(__typeof__(&name), ember_##name##_fn)
#define SAME_VALUE(name) _Static_assert((long long)EMBER_##name == (long long)(name), #name " differs")

SAME_TYPE(cl_int, ember_cl_int);
SAME_TYPE(cl_uint, ember_cl_uint);
SAME_TYPE(cl_ulong, ember_cl_ulong);
SAME_TYPE(cl_bitfield, ember_cl_bitfield);
SAME_TYPE(cl_bool, ember_cl_uint);
SAME_TYPE(cl_device_type, ember_cl_bitfield);
SAME_TYPE(cl_mem_flags, ember_cl_bitfield);
SAME_TYPE(cl_command_queue_properties, ember_cl_bitfield);
SAME_TYPE(cl_context_properties, ember_cl_context_properties);
SAME_TYPE(cl_platform_id, ember_cl_platform_id);
SAME_TYPE(cl_device_id, ember_cl_device_id);
SAME_TYPE(cl_context, ember_cl_context);
SAME_TYPE(cl_command_queue, ember_cl_command_queue);
SAME_TYPE(cl_mem, ember_cl_mem);
SAME_TYPE(cl_program, ember_cl_program);
SAME_TYPE(cl_kernel, ember_cl_kernel);
SAME_TYPE(cl_event, ember_cl_event);

SAME_FUNCTION(clGetPlatformIDs);
SAME_FUNCTION(clGetPlatformInfo);
SAME_FUNCTION(clGetDeviceIDs);
SAME_FUNCTION(clGetDeviceInfo);
SAME_FUNCTION(clCreateContext);
SAME_FUNCTION(clReleaseContext);
SAME_FUNCTION(clCreateCommandQueue);
SAME_FUNCTION(clReleaseCommandQueue);
SAME_FUNCTION(clFinish);
SAME_FUNCTION(clFlush);
SAME_FUNCTION(clCreateBuffer);
SAME_FUNCTION(clReleaseMemObject);
SAME_FUNCTION(clEnqueueWriteBuffer);
SAME_FUNCTION(clEnqueueReadBuffer);
SAME_FUNCTION(clCreateProgramWithSource);
SAME_FUNCTION(clBuildProgram);
SAME_FUNCTION(clGetProgramBuildInfo);
SAME_FUNCTION(clReleaseProgram);
SAME_FUNCTION(clCreateKernel);
SAME_FUNCTION(clReleaseKernel);
SAME_FUNCTION(clSetKernelArg);
SAME_FUNCTION(clGetKernelWorkGroupInfo);
SAME_FUNCTION(clEnqueueNDRangeKernel);

SAME_VALUE(CL_SUCCESS);
SAME_VALUE(CL_DEVICE_NOT_FOUND);
SAME_VALUE(CL_FALSE);
SAME_VALUE(CL_TRUE);
SAME_VALUE(CL_PLATFORM_VERSION);
SAME_VALUE(CL_PLATFORM_NAME);
SAME_VALUE(CL_PLATFORM_VENDOR);
SAME_VALUE(CL_DEVICE_TYPE_DEFAULT);
SAME_VALUE(CL_DEVICE_TYPE_CPU);
SAME_VALUE(CL_DEVICE_TYPE_GPU);
SAME_VALUE(CL_DEVICE_TYPE_ACCELERATOR);
SAME_VALUE(CL_DEVICE_TYPE_ALL);
SAME_VALUE(CL_DEVICE_TYPE);
SAME_VALUE(CL_DEVICE_MAX_COMPUTE_UNITS);
SAME_VALUE(CL_DEVICE_MAX_WORK_GROUP_SIZE);
SAME_VALUE(CL_DEVICE_MAX_MEM_ALLOC_SIZE);
SAME_VALUE(CL_DEVICE_SINGLE_FP_CONFIG);
SAME_VALUE(CL_DEVICE_GLOBAL_MEM_SIZE);
SAME_VALUE(CL_DEVICE_LOCAL_MEM_SIZE);
SAME_VALUE(CL_DEVICE_NAME);
SAME_VALUE(CL_DEVICE_VENDOR);
SAME_VALUE(CL_DRIVER_VERSION);
SAME_VALUE(CL_DEVICE_VERSION);
SAME_VALUE(CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT);
SAME_VALUE(CL_MEM_READ_WRITE);
SAME_VALUE(CL_MEM_WRITE_ONLY);
SAME_VALUE(CL_MEM_READ_ONLY);
SAME_VALUE(CL_PROGRAM_BUILD_LOG);
SAME_VALUE(CL_KERNEL_WORK_GROUP_SIZE);

#endif
#endif

// ISO C wants at least one declaration per file.
typedef int ember_opencl_header_check_unused;
