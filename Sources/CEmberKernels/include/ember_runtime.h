// Small CPU helpers the Swift runtime needs and Swift cannot spell.
#ifndef EMBER_RUNTIME_H
#define EMBER_RUNTIME_H

/// Tells the CPU we are in a spin-wait loop (saves power, frees the sibling hyperthread).
static inline void ember_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
