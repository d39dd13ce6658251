// A small C API over FAISS's IVF indexes (Debian libfaiss-dev 1.7.3, a static C++ library with no
// C symbols), for Swift. Every call catches every C++ exception inside the shim: a failure is a
// nonzero return and a one-line message in `err` (NUL-terminated, truncated to `err_cap`); nothing
// is thrown across this boundary.
//
// Threads: calls that compute take `threads` (>= 1). FAISS parallelises with OpenMP; the shim sets
// the OpenMP thread count for the calling thread only, for the duration of the call, and restores
// it afterwards (see zs_faiss.cpp). Results depend only on the inputs and `threads`.
//
// Concurrency: zs_faiss_search, zs_faiss_ntotal, zs_faiss_dim, zs_faiss_memory_bytes and
// zs_faiss_write only read the index and may run concurrently on one handle; zs_faiss_add and
// zs_faiss_remove_ids modify it and need exclusive access. Shapes are given as `// x: [n, d]`
// (row-major float32).
#ifndef ZS_FAISS_H
#define ZS_FAISS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// An IVF index with inner-product metric (FAISS IndexIVF* over an IndexFlatIP coarse quantizer).
typedef struct zs_faiss_index zs_faiss_index;

/// How vectors are stored in the inverted lists.
typedef enum {
    ZS_FAISS_CODEC_FP16 = 0, ///< IndexIVFScalarQuantizer QT_fp16 (residuals), 2 bytes a dimension
    ZS_FAISS_CODEC_SQ8 = 1,  ///< IndexIVFScalarQuantizer QT_8bit (residuals), 1 byte a dimension
    ZS_FAISS_CODEC_FLAT = 2, ///< IndexIVFFlat, float32, 4 bytes a dimension
} zs_faiss_codec;

/// Creates an index of dimension `d` with `nlist` lists and trains it (spherical k-means, fixed
/// seed, FAISS's default 25 iterations) on `x`: [n, d], n >= nlist. `nprobe` is the default for
/// searches (kept in the file). On success `*out` is a new index (free it with zs_faiss_free);
/// it holds no vectors yet.
int zs_faiss_train_new(int64_t d, int64_t nlist, zs_faiss_codec codec, int64_t nprobe, const float *x,
                       int64_t n, int threads, zs_faiss_index **out, char *err, size_t err_cap);

/// Frees an index (NULL is fine).
void zs_faiss_free(zs_faiss_index *index);

/// Adds x: [n, d] with ids: [n] (any int64 but -1; duplicates are kept).
int zs_faiss_add(zs_faiss_index *index, const float *x, const int64_t *ids, int64_t n, int threads,
                 char *err, size_t err_cap);

/// The k best (largest inner product) of each query q: [nq, d], scanning `nprobe` lists:
/// scores: [nq, k] best first, ids: [nq, k]; missing results (fewer than k candidates) have id -1.
/// nprobe <= 0 means the index's default; it is clamped to nlist.
int zs_faiss_search(const zs_faiss_index *index, const float *q, int64_t nq, int64_t k, int64_t nprobe,
                    int threads, float *scores, int64_t *ids, char *err, size_t err_cap);

/// Removes every vector whose id is in ids: [n] (a scan of all lists); *removed = how many.
int zs_faiss_remove_ids(zs_faiss_index *index, const int64_t *ids, int64_t n, int threads,
                        int64_t *removed, char *err, size_t err_cap);

int64_t zs_faiss_ntotal(const zs_faiss_index *index); ///< vectors held
int64_t zs_faiss_dim(const zs_faiss_index *index);    ///< d
int64_t zs_faiss_nlist(const zs_faiss_index *index);  ///< lists
int64_t zs_faiss_nprobe(const zs_faiss_index *index); ///< default lists scanned a query
int zs_faiss_codec_of(const zs_faiss_index *index);   ///< a zs_faiss_codec
/// Heap bytes held: list codes and ids (allocated capacity), centroids, codec tables.
int64_t zs_faiss_memory_bytes(const zs_faiss_index *index);

/// Writes the index to the open file descriptor `fd` (from its current position, not closed):
/// FAISS's own serialisation (readable by faiss::read_index) followed by a 24-byte trailer
/// ("ZSFAISS1", payload length, CRC-32 of the payload, little-endian u64s).
int zs_faiss_write_fd(const zs_faiss_index *index, int fd, char *err, size_t err_cap);

/// Reads a file written by zs_faiss_write_fd. The trailer and checksum are verified before FAISS
/// parses anything, and the parsed index must be one of the kinds above with inner product, so a
/// truncated or corrupt file is an error, not a crash.
int zs_faiss_read_path(const char *path, zs_faiss_index **out, char *err, size_t err_cap);

#ifdef __cplusplus
}
#endif

#endif
