// The x86 tile and prefill kernels (dot_avx2.c, gemm_avx2.c) compiled a second time for
// AVX-512 VL/BW + VNNI: the same code on the 32 vector registers EVEX encoding gives, with each
// integer dot step one vpdpbusd or vpdpwssd (avx2_util.h). Exported as ember_vnni_*; the
// drivers use them when ember_kernel_level() says the CPU has the features. Same integers,
// same float steps: results equal the AVX2 kernels' bit for bit.
#define EMBER_X86_VNNI 1
#include "dot_avx2.c"
#include "gemm_avx2.c"
