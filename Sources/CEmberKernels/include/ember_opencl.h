// The part of the OpenCL 1.2 API that Ember uses, declared here so that building Ember needs no
// OpenCL headers or library. At run time ember_opencl_load() opens libOpenCL.so.1 with dlopen
// and fills a table of function pointers; when the library or a function is missing it says
// why, and Ember runs on the CPU. Where the official headers are installed,
// opencl_header_check.c checks every declaration here against them at compile time.
#ifndef EMBER_OPENCL_H
#define EMBER_OPENCL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Scalar types, as the OpenCL ABI defines them.
typedef int32_t ember_cl_int;
typedef uint32_t ember_cl_uint;
typedef uint64_t ember_cl_ulong;
typedef ember_cl_ulong ember_cl_bitfield;
typedef intptr_t ember_cl_context_properties;

// Opaque handles. The struct tags are the ABI's, so that these types are the official ones.
typedef struct _cl_platform_id *ember_cl_platform_id;
typedef struct _cl_device_id *ember_cl_device_id;
typedef struct _cl_context *ember_cl_context;
typedef struct _cl_command_queue *ember_cl_command_queue;
typedef struct _cl_mem *ember_cl_mem;
typedef struct _cl_program *ember_cl_program;
typedef struct _cl_kernel *ember_cl_kernel;
typedef struct _cl_event *ember_cl_event;

enum {
    EMBER_CL_SUCCESS = 0,
    EMBER_CL_DEVICE_NOT_FOUND = -1,
    EMBER_CL_FALSE = 0,
    EMBER_CL_TRUE = 1,

    // clGetPlatformInfo
    EMBER_CL_PLATFORM_VERSION = 0x0901,
    EMBER_CL_PLATFORM_NAME = 0x0902,
    EMBER_CL_PLATFORM_VENDOR = 0x0903,

    // device types (a bit field)
    EMBER_CL_DEVICE_TYPE_DEFAULT = 1 << 0,
    EMBER_CL_DEVICE_TYPE_CPU = 1 << 1,
    EMBER_CL_DEVICE_TYPE_GPU = 1 << 2,
    EMBER_CL_DEVICE_TYPE_ACCELERATOR = 1 << 3,

    // clGetDeviceInfo
    EMBER_CL_DEVICE_TYPE = 0x1000,
    EMBER_CL_DEVICE_MAX_COMPUTE_UNITS = 0x1002,
    EMBER_CL_DEVICE_MAX_WORK_GROUP_SIZE = 0x1004,
    EMBER_CL_DEVICE_MAX_MEM_ALLOC_SIZE = 0x1010,
    EMBER_CL_DEVICE_SINGLE_FP_CONFIG = 0x101B,
    EMBER_CL_DEVICE_GLOBAL_MEM_SIZE = 0x101F,
    EMBER_CL_DEVICE_LOCAL_MEM_SIZE = 0x1023,
    EMBER_CL_DEVICE_NAME = 0x102B,
    EMBER_CL_DEVICE_VENDOR = 0x102C,
    EMBER_CL_DRIVER_VERSION = 0x102D,
    EMBER_CL_DEVICE_VERSION = 0x102F,
    EMBER_CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT = 1 << 7,

    // clCreateBuffer flags
    EMBER_CL_MEM_READ_WRITE = 1 << 0,
    EMBER_CL_MEM_WRITE_ONLY = 1 << 1,
    EMBER_CL_MEM_READ_ONLY = 1 << 2,

    // clGetProgramBuildInfo, clGetKernelWorkGroupInfo
    EMBER_CL_PROGRAM_BUILD_LOG = 0x1183,
    EMBER_CL_KERNEL_WORK_GROUP_SIZE = 0x11B0,
};

/// All device types (does not fit the enum's int).
#define EMBER_CL_DEVICE_TYPE_ALL 0xFFFFFFFFu

// Function types: the OpenCL 1.2 signatures (the calling convention is the platform's default
// C one on Linux).
typedef ember_cl_int (*ember_clGetPlatformIDs_fn)(ember_cl_uint num_entries, ember_cl_platform_id *platforms,
                                                  ember_cl_uint *num_platforms);
typedef ember_cl_int (*ember_clGetPlatformInfo_fn)(ember_cl_platform_id platform, ember_cl_uint param_name,
                                                   size_t value_size, void *value, size_t *value_size_ret);
typedef ember_cl_int (*ember_clGetDeviceIDs_fn)(ember_cl_platform_id platform, ember_cl_bitfield device_type,
                                                ember_cl_uint num_entries, ember_cl_device_id *devices,
                                                ember_cl_uint *num_devices);
typedef ember_cl_int (*ember_clGetDeviceInfo_fn)(ember_cl_device_id device, ember_cl_uint param_name,
                                                 size_t value_size, void *value, size_t *value_size_ret);
typedef ember_cl_context (*ember_clCreateContext_fn)(
    const ember_cl_context_properties *properties, ember_cl_uint num_devices, const ember_cl_device_id *devices,
    void (*notify)(const char *error_info, const void *private_info, size_t cb, void *user_data),
    void *user_data, ember_cl_int *errcode_ret);
typedef ember_cl_int (*ember_clReleaseContext_fn)(ember_cl_context context);
typedef ember_cl_command_queue (*ember_clCreateCommandQueue_fn)(ember_cl_context context, ember_cl_device_id device,
                                                                ember_cl_bitfield properties,
                                                                ember_cl_int *errcode_ret);
typedef ember_cl_int (*ember_clReleaseCommandQueue_fn)(ember_cl_command_queue queue);
typedef ember_cl_int (*ember_clFinish_fn)(ember_cl_command_queue queue);
typedef ember_cl_int (*ember_clFlush_fn)(ember_cl_command_queue queue);
typedef ember_cl_mem (*ember_clCreateBuffer_fn)(ember_cl_context context, ember_cl_bitfield flags, size_t size,
                                                void *host_ptr, ember_cl_int *errcode_ret);
typedef ember_cl_int (*ember_clReleaseMemObject_fn)(ember_cl_mem memobj);
typedef ember_cl_int (*ember_clEnqueueWriteBuffer_fn)(ember_cl_command_queue queue, ember_cl_mem buffer,
                                                      ember_cl_uint blocking_write, size_t offset, size_t size,
                                                      const void *ptr, ember_cl_uint num_events_in_wait_list,
                                                      const ember_cl_event *event_wait_list, ember_cl_event *event);
typedef ember_cl_int (*ember_clEnqueueReadBuffer_fn)(ember_cl_command_queue queue, ember_cl_mem buffer,
                                                     ember_cl_uint blocking_read, size_t offset, size_t size,
                                                     void *ptr, ember_cl_uint num_events_in_wait_list,
                                                     const ember_cl_event *event_wait_list, ember_cl_event *event);
typedef ember_cl_program (*ember_clCreateProgramWithSource_fn)(ember_cl_context context, ember_cl_uint count,
                                                               const char **strings, const size_t *lengths,
                                                               ember_cl_int *errcode_ret);
typedef ember_cl_int (*ember_clBuildProgram_fn)(ember_cl_program program, ember_cl_uint num_devices,
                                                const ember_cl_device_id *device_list, const char *options,
                                                void (*notify)(ember_cl_program program, void *user_data),
                                                void *user_data);
typedef ember_cl_int (*ember_clGetProgramBuildInfo_fn)(ember_cl_program program, ember_cl_device_id device,
                                                       ember_cl_uint param_name, size_t value_size, void *value,
                                                       size_t *value_size_ret);
typedef ember_cl_int (*ember_clReleaseProgram_fn)(ember_cl_program program);
typedef ember_cl_kernel (*ember_clCreateKernel_fn)(ember_cl_program program, const char *kernel_name,
                                                   ember_cl_int *errcode_ret);
typedef ember_cl_int (*ember_clReleaseKernel_fn)(ember_cl_kernel kernel);
typedef ember_cl_int (*ember_clSetKernelArg_fn)(ember_cl_kernel kernel, ember_cl_uint arg_index, size_t arg_size,
                                                const void *arg_value);
typedef ember_cl_int (*ember_clGetKernelWorkGroupInfo_fn)(ember_cl_kernel kernel, ember_cl_device_id device,
                                                          ember_cl_uint param_name, size_t value_size, void *value,
                                                          size_t *value_size_ret);
typedef ember_cl_int (*ember_clEnqueueNDRangeKernel_fn)(ember_cl_command_queue queue, ember_cl_kernel kernel,
                                                        ember_cl_uint work_dim, const size_t *global_work_offset,
                                                        const size_t *global_work_size, const size_t *local_work_size,
                                                        ember_cl_uint num_events_in_wait_list,
                                                        const ember_cl_event *event_wait_list, ember_cl_event *event);

/// The OpenCL functions Ember calls, looked up in the loaded library.
typedef struct {
    ember_clGetPlatformIDs_fn clGetPlatformIDs;
    ember_clGetPlatformInfo_fn clGetPlatformInfo;
    ember_clGetDeviceIDs_fn clGetDeviceIDs;
    ember_clGetDeviceInfo_fn clGetDeviceInfo;
    ember_clCreateContext_fn clCreateContext;
    ember_clReleaseContext_fn clReleaseContext;
    ember_clCreateCommandQueue_fn clCreateCommandQueue;
    ember_clReleaseCommandQueue_fn clReleaseCommandQueue;
    ember_clFinish_fn clFinish;
    ember_clFlush_fn clFlush;
    ember_clCreateBuffer_fn clCreateBuffer;
    ember_clReleaseMemObject_fn clReleaseMemObject;
    ember_clEnqueueWriteBuffer_fn clEnqueueWriteBuffer;
    ember_clEnqueueReadBuffer_fn clEnqueueReadBuffer;
    ember_clCreateProgramWithSource_fn clCreateProgramWithSource;
    ember_clBuildProgram_fn clBuildProgram;
    ember_clGetProgramBuildInfo_fn clGetProgramBuildInfo;
    ember_clReleaseProgram_fn clReleaseProgram;
    ember_clCreateKernel_fn clCreateKernel;
    ember_clReleaseKernel_fn clReleaseKernel;
    ember_clSetKernelArg_fn clSetKernelArg;
    ember_clGetKernelWorkGroupInfo_fn clGetKernelWorkGroupInfo;
    ember_clEnqueueNDRangeKernel_fn clEnqueueNDRangeKernel;
} ember_opencl_api;

/// Opens the OpenCL library at `path` (a file name such as "libOpenCL.so.1" is searched the
/// usual dlopen way) and fills `api`. Returns 0 on success; otherwise 1, with the reason (the
/// loader's message, or the name of the missing function) written to `reason` (at most
/// `reason_size` bytes, NUL-terminated). The library stays loaded for the life of the process:
/// drivers do not all survive being unloaded.
int ember_opencl_load(const char *path, ember_opencl_api *api, char *reason, size_t reason_size);

#ifdef __cplusplus
}
#endif

#endif
