// Loads the OpenCL library at run time (ember_opencl.h): no OpenCL headers or library are
// needed to build Ember, and a machine without them simply reports OpenCL as unavailable.
#include "ember_opencl.h"
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int ember_opencl_load(const char *path, ember_opencl_api *api, char *reason, size_t reason_size) {
    memset(api, 0, sizeof *api);
    // RTLD_LOCAL: the driver's symbols must not leak into (or clash with) the rest of Ember.
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        const char *message = dlerror();
        snprintf(reason, reason_size, "cannot load %s: %s", path, message ? message : "unknown error");
        return 1;
    }
    // Each entry: where it goes and the exported name it is looked up by.
#define ENTRY(name) { (void **)&api->name, #name }
    const struct { void **slot; const char *name; } entries[] = {
        ENTRY(clGetPlatformIDs), ENTRY(clGetPlatformInfo), ENTRY(clGetDeviceIDs), ENTRY(clGetDeviceInfo),
        ENTRY(clCreateContext), ENTRY(clReleaseContext), ENTRY(clCreateCommandQueue),
        ENTRY(clReleaseCommandQueue), ENTRY(clFinish), ENTRY(clFlush), ENTRY(clCreateBuffer),
        ENTRY(clReleaseMemObject), ENTRY(clEnqueueWriteBuffer), ENTRY(clEnqueueReadBuffer),
        ENTRY(clCreateProgramWithSource), ENTRY(clBuildProgram), ENTRY(clGetProgramBuildInfo),
        ENTRY(clReleaseProgram), ENTRY(clCreateKernel), ENTRY(clReleaseKernel), ENTRY(clSetKernelArg),
        ENTRY(clGetKernelWorkGroupInfo), ENTRY(clEnqueueNDRangeKernel),
    };
#undef ENTRY
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        void *symbol = dlsym(library, entries[i].name);
        if (!symbol) {
            snprintf(reason, reason_size, "%s has no function %s (OpenCL 1.2 is needed)", path, entries[i].name);
            memset(api, 0, sizeof *api);
            return 1;
        }
        // Object to function pointer through memcpy: the conversion POSIX dlsym relies on.
        memcpy(entries[i].slot, &symbol, sizeof symbol);
    }
    return 0;
}
