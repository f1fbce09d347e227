// Row gather against a batch of activation columns (several sequences in one forward pass):
// the rows of a set of neurons (the union of the columns' active sets) are read once for all
// columns. Single-threaded over what it is given, like the rest of ember_sparse.h.
#include "ember_sparse.h"
#include "internal.h"

// Rows taken from memory together: the tiles of a group share its rows while they sit in L1,
// and each group prefetches the next one block by block during its first column group.
enum { GROUP = EMBER_MAX_NR, COLUMNS = 4 };

// The tallest tile with nc columns the set provides, at most `rows` tall.
static int tallest(const ember_kernel_set *k, int nc, int64_t rows) {
    for (int nr = EMBER_MAX_NR; nr > 1; nr--)
        if (nr <= rows && k->tiles[nr - 1][nc - 1]) return nr;
    return 1;
}

// Every (row, column) dot goes through a tile, whose result does not depend on the tile's
// shape or its other rows and columns (internal.h): each y is bit-identical to ember_matvec's
// for that row and column, hence to ember_matvec_gather's of a single column.
void ember_matmul_gather(int type, int64_t n, const void *w, size_t row_bytes, const void *act,
                         size_t act_stride, int64_t ncols, const int32_t *rows, int64_t count,
                         float *y, int64_t ldy) {
    const ember_kernel_set *k = ember_tile_kernels(type);
    if (!k || ncols <= 0 || count <= 0) return;
    const uint8_t *base = w, *a = act;
    for (int64_t g = 0; g < count; g += GROUP) {
        int m = count - g < GROUP ? (int)(count - g) : GROUP;
        const uint8_t *cur[GROUP], *next[GROUP], *ahead[GROUP];
        for (int j = 0; j < m; j++) {
            cur[j] = base + (size_t)rows[g + j] * row_bytes;
            ahead[j] = g + GROUP + j < count ? base + (size_t)rows[g + GROUP + j] * row_bytes : cur[j];
        }
        for (int64_t c = 0; c < ncols;) {
            int nc = ncols - c >= COLUMNS ? COLUMNS : (int)(ncols - c);
            while (nc > 1 && !k->tiles[0][nc - 1]) nc--;
            for (int r = 0; r < m;) {
                int nr = tallest(k, nc, m - r);
                // The first column group fetches the group from memory: it prefetches the next.
                for (int j = 0; j < nr; j++) next[j] = c == 0 ? ahead[r + j] : cur[r + j];
                k->tiles[nr - 1][nc - 1](n, cur + r, next, a + c * act_stride, act_stride, y + c * ldy + g + r, ldy);
                r += nr;
            }
            c += nc;
        }
    }
}
