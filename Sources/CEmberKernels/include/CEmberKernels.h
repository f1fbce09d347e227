// The C kernels' public headers, as one module for Swift. A new header must be added here
// (an explicit umbrella header also makes incremental builds notice it).
#include "ember_kernels.h"
#include "ember_runtime.h"
#include "ember_vector.h"
#include "ember_sparse.h"
#include "ember_gemm.h"
#include "ember_attention.h"
#include "ember_opencl.h"
