// The C shim over FAISS (see include/zs_faiss.h). Every entry point runs its body inside `guarded`,
// which catches every C++ exception and turns it into an error code and a one-line message.
//
// Threads: FAISS parallelises with OpenMP (libgomp). `ThreadScope` calls omp_set_num_threads on
// the calling thread before FAISS runs and restores the previous value afterwards. In libgomp the
// thread count (the nthreads-var ICV) belongs to the calling thread's own data environment:
// setting it changes the size of the parallel regions that this thread starts, not those of any
// other thread, so concurrent callers with different counts do not disturb each other, and
// restoring it leaves the thread as it was (other OpenMP code that later runs on the same thread
// sees its old setting). libgomp keeps a small pool of worker threads per calling thread between
// calls (idle, spinning briefly then sleeping).
//
// BLAS: FAISS's k-means and batched coarse assignment call sgemm_ from the calling thread; it
// resolves to the OpenBLAS that zeroseg links (libopenblas, which also provides the LAPACK symbols
// libfaiss.a needs), and zeroseg keeps that single-threaded (ZeroSegCore/Threads.swift).
//
// Determinism: k-means uses a fixed seed, and the OpenMP loops FAISS runs here (k-means centroid
// updates partitioned by centroid, IVF add partitioned by list, search partitioned by query) do
// not depend on timing, so the same inputs and thread count give the same index and results, bit
// for bit. Across thread counts the results agree in the entries found but scores may differ in the
// last bits (measured: 1 ulp at 5,000 x 64; ZeroSegANN's tests check both).
// parallel_mode stays 0 (split over queries): mode 1 (split over probes) merges per-thread heaps in
// a critical section, whose order depends on timing, and was also slower here.

#include "zs_faiss.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <new>
#include <string>
#include <sys/stat.h>
#include <unistd.h>

// The two OpenMP runtime calls used, declared here with their standard signatures (OpenMP 5.x
// §3.2): Swift's clang ships no omp.h, and GCC's lives in a compiler-private include directory.
// They resolve to libgomp, the runtime libfaiss.a was built against.
extern "C" {
void omp_set_num_threads(int num_threads);
int omp_get_max_threads(void);
}

struct zs_faiss_index {
    std::unique_ptr<faiss::IndexIVF> ivf; // owns its quantizer (own_fields)
};

namespace {

using idx_t = faiss::Index::idx_t;

const char kMagic[8] = {'Z', 'S', 'F', 'A', 'I', 'S', 'S', '1'};
const size_t kTrailer = 24;

void setError(char *err, size_t cap, const std::string &message) {
    if (!err || cap == 0) return;
    std::string m = message;
    for (char &c : m)
        if (c == '\n' || c == '\r') c = ' ';
    while (!m.empty() && m.back() == ' ') m.pop_back();
    snprintf(err, cap, "%s", m.c_str());
}

/// Runs `body`; every exception becomes return code 1 and a message.
template <class F> int guarded(char *err, size_t cap, F body) {
    try {
        body();
        return 0;
    } catch (const faiss::FaissException &e) {
        setError(err, cap, e.msg.empty() ? std::string(e.what()) : e.msg);
    } catch (const std::bad_alloc &) {
        setError(err, cap, "out of memory");
    } catch (const std::exception &e) {
        setError(err, cap, e.what());
    } catch (...) {
        setError(err, cap, "unknown C++ exception");
    }
    return 1;
}

/// A failure the shim reports itself.
struct ShimError : std::exception {
    std::string message;
    explicit ShimError(std::string m) : message(std::move(m)) {}
    const char *what() const noexcept override { return message.c_str(); }
};

/// The calling thread's OpenMP thread count, set for the scope and restored (see the top).
struct ThreadScope {
    int previous;
    explicit ThreadScope(int threads) : previous(omp_get_max_threads()) {
        omp_set_num_threads(threads < 1 ? 1 : threads);
    }
    ~ThreadScope() { omp_set_num_threads(previous); }
    ThreadScope(const ThreadScope &) = delete;
    ThreadScope &operator=(const ThreadScope &) = delete;
};

uLong crcUpdate(uLong crc, const uint8_t *p, size_t n) {
    while (n > 0) {
        uInt part = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, p, part);
        p += part;
        n -= part;
    }
    return crc;
}

void putU64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
uint64_t getU64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/// write(2) of all bytes, retrying short writes and EINTR; false with errno set on failure.
bool writeAll(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/// pread(2) of exactly n bytes at offset; false at end of file (errno 0) or on error.
bool preadAll(int fd, uint8_t *p, size_t n, off_t offset) {
    while (n > 0) {
        ssize_t r = ::pread(fd, p, n, offset);
        if (r < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (r == 0) {
            errno = 0;
            return false;
        }
        p += r;
        n -= (size_t)r;
        offset += r;
    }
    return true;
}

/// FAISS's writer interface onto a file descriptor, keeping a CRC-32 and a byte count.
struct FdWriter : faiss::IOWriter {
    int fd;
    uLong crc = crc32(0L, Z_NULL, 0);
    uint64_t bytes = 0;
    int error = 0;
    explicit FdWriter(int f) : fd(f) { name = "zs_faiss"; }
    size_t operator()(const void *ptr, size_t size, size_t nitems) override {
        if (error) return 0;
        size_t n = size * nitems;
        if (n == 0) return nitems;
        if (!writeAll(fd, (const uint8_t *)ptr, n)) {
            error = errno ? errno : EIO;
            return 0;
        }
        crc = crcUpdate(crc, (const uint8_t *)ptr, n);
        bytes += n;
        return nitems;
    }
    int fileno() override { return fd; }
};

/// FAISS's reader interface onto the first `limit` bytes of a file descriptor.
struct FdReader : faiss::IOReader {
    int fd;
    uint64_t position = 0, limit;
    int error = 0;
    FdReader(int f, uint64_t l) : fd(f), limit(l) { name = "zs_faiss"; }
    size_t operator()(void *ptr, size_t size, size_t nitems) override {
        if (size == 0 || nitems == 0) return 0;
        uint64_t left = limit - position;
        size_t items = nitems;
        if ((uint64_t)items > left / size) items = (size_t)(left / size);
        size_t n = items * size;
        if (n > 0 && !preadAll(fd, (uint8_t *)ptr, n, (off_t)position)) {
            error = errno ? errno : EIO;
            return 0;
        }
        position += n;
        return items;
    }
    int fileno() override { return -1; } // no memory mapping
};

struct Fd {
    int fd;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

int codecOf(const faiss::IndexIVF *ivf) {
    if (auto sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer *>(ivf)) {
        if (sq->sq.qtype == faiss::ScalarQuantizer::QT_fp16) return ZS_FAISS_CODEC_FP16;
        if (sq->sq.qtype == faiss::ScalarQuantizer::QT_8bit) return ZS_FAISS_CODEC_SQ8;
        return -1;
    }
    if (dynamic_cast<const faiss::IndexIVFFlat *>(ivf)) return ZS_FAISS_CODEC_FLAT;
    return -1;
}

/// What the shim relies on in an index read from a file (FAISS's reader checks the framing but
/// not every cross-field invariant the search code assumes).
void checkLoaded(const faiss::IndexIVF *ivf) {
    auto bad = [](const std::string &why) { throw ShimError("not a zeroseg ANN index: " + why); };
    if (codecOf(ivf) < 0) bad("unsupported index type");
    if (ivf->d <= 0) bad("dimension " + std::to_string(ivf->d));
    if (ivf->metric_type != faiss::METRIC_INNER_PRODUCT) bad("metric is not inner product");
    if (!ivf->is_trained) bad("index is not trained");
    auto q = dynamic_cast<const faiss::IndexFlat *>(ivf->quantizer);
    if (!q || q->metric_type != faiss::METRIC_INNER_PRODUCT) bad("coarse quantizer is not a flat inner-product index");
    if (q->d != ivf->d || (size_t)q->ntotal != ivf->nlist || ivf->nlist == 0) bad("coarse quantizer does not match the lists");
    auto lists = dynamic_cast<const faiss::ArrayInvertedLists *>(ivf->invlists);
    if (!lists) bad("inverted lists are not in memory");
    if (lists->nlist != ivf->nlist || lists->code_size != ivf->code_size) bad("inverted lists do not match the index");
    if (auto sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer *>(ivf)) {
        if (sq->sq.d != (size_t)ivf->d || sq->sq.code_size != ivf->code_size) bad("scalar quantizer does not match the index");
        if (sq->sq.qtype == faiss::ScalarQuantizer::QT_8bit && sq->sq.trained.size() != 2 * (size_t)ivf->d) bad("scalar quantizer tables");
    } else if (ivf->code_size != sizeof(float) * (size_t)ivf->d) {
        bad("code size does not match the dimension");
    }
    size_t total = 0;
    for (size_t i = 0; i < lists->nlist; i++) {
        if (lists->ids[i].size() * lists->code_size != lists->codes[i].size()) bad("inverted list sizes");
        total += lists->ids[i].size();
    }
    if (total != (size_t)ivf->ntotal) bad("vector count does not match the lists");
}

} // namespace

extern "C" {

int zs_faiss_train_new(int64_t d, int64_t nlist, zs_faiss_codec codec, int64_t nprobe, const float *x,
                       int64_t n, int threads, zs_faiss_index **out, char *err, size_t err_cap) {
    if (out) *out = nullptr;
    return guarded(err, err_cap, [&] {
        if (!out || !x) throw ShimError("null argument");
        if (d <= 0 || nlist <= 0 || n < nlist) throw ShimError("need d > 0, nlist > 0 and n >= nlist");
        ThreadScope scope(threads);
        auto quantizer = std::make_unique<faiss::IndexFlatIP>(d);
        std::unique_ptr<faiss::IndexIVF> ivf;
        switch (codec) {
        case ZS_FAISS_CODEC_FP16:
        case ZS_FAISS_CODEC_SQ8:
            ivf = std::make_unique<faiss::IndexIVFScalarQuantizer>(
                quantizer.get(), (size_t)d, (size_t)nlist,
                codec == ZS_FAISS_CODEC_FP16 ? faiss::ScalarQuantizer::QT_fp16 : faiss::ScalarQuantizer::QT_8bit,
                faiss::METRIC_INNER_PRODUCT, /*encode_residual*/ true);
            break;
        case ZS_FAISS_CODEC_FLAT:
            ivf = std::make_unique<faiss::IndexIVFFlat>(quantizer.get(), (size_t)d, (size_t)nlist,
                                                        faiss::METRIC_INNER_PRODUCT);
            break;
        default:
            throw ShimError("unknown codec");
        }
        ivf->own_fields = true;
        quantizer.release();
        ivf->cp.seed = 1234;              // fixed: the same data train the same centroids
        ivf->cp.spherical = true;         // unit centroids for inner product on unit vectors
        ivf->cp.min_points_per_centroid = 1; // no stderr warning for small samples
        ivf->verbose = false;
        ivf->nprobe = (size_t)(nprobe < 1 ? 1 : nprobe > nlist ? nlist : nprobe);
        ivf->train(n, x);
        auto handle = std::make_unique<zs_faiss_index>();
        handle->ivf = std::move(ivf);
        *out = handle.release();
    });
}

void zs_faiss_free(zs_faiss_index *index) { delete index; }

int zs_faiss_add(zs_faiss_index *index, const float *x, const int64_t *ids, int64_t n, int threads,
                 char *err, size_t err_cap) {
    return guarded(err, err_cap, [&] {
        if (!index || (n > 0 && (!x || !ids)) || n < 0) throw ShimError("bad argument");
        if (n == 0) return;
        ThreadScope scope(threads);
        index->ivf->add_with_ids(n, x, (const idx_t *)ids);
    });
}

int zs_faiss_search(const zs_faiss_index *index, const float *q, int64_t nq, int64_t k, int64_t nprobe,
                    int threads, float *scores, int64_t *ids, char *err, size_t err_cap) {
    return guarded(err, err_cap, [&] {
        if (!index || nq < 0 || k < 1 || (nq > 0 && (!q || !scores || !ids))) throw ShimError("bad argument");
        if (nq == 0) return;
        ThreadScope scope(threads);
        faiss::SearchParametersIVF params; // per call: the index itself is not modified
        int64_t lists = (int64_t)index->ivf->nlist;
        if (nprobe <= 0) nprobe = (int64_t)index->ivf->nprobe;
        params.nprobe = (size_t)(nprobe < 1 ? 1 : nprobe > lists ? lists : nprobe);
        index->ivf->search(nq, q, k, scores, (idx_t *)ids, &params);
    });
}

int zs_faiss_remove_ids(zs_faiss_index *index, const int64_t *ids, int64_t n, int threads,
                        int64_t *removed, char *err, size_t err_cap) {
    if (removed) *removed = 0;
    return guarded(err, err_cap, [&] {
        if (!index || n < 0 || (n > 0 && !ids)) throw ShimError("bad argument");
        if (n == 0) return;
        ThreadScope scope(threads);
        faiss::IDSelectorBatch selector((size_t)n, (const idx_t *)ids);
        size_t r = index->ivf->remove_ids(selector);
        if (removed) *removed = (int64_t)r;
    });
}

int64_t zs_faiss_ntotal(const zs_faiss_index *index) { return index ? (int64_t)index->ivf->ntotal : 0; }
int64_t zs_faiss_dim(const zs_faiss_index *index) { return index ? (int64_t)index->ivf->d : 0; }
int64_t zs_faiss_nlist(const zs_faiss_index *index) { return index ? (int64_t)index->ivf->nlist : 0; }
int64_t zs_faiss_nprobe(const zs_faiss_index *index) { return index ? (int64_t)index->ivf->nprobe : 0; }
int zs_faiss_codec_of(const zs_faiss_index *index) { return index ? codecOf(index->ivf.get()) : -1; }

int64_t zs_faiss_memory_bytes(const zs_faiss_index *index) {
    if (!index) return 0;
    const faiss::IndexIVF *ivf = index->ivf.get();
    int64_t bytes = (int64_t)sizeof(*ivf);
    if (auto lists = dynamic_cast<const faiss::ArrayInvertedLists *>(ivf->invlists)) {
        bytes += (int64_t)(sizeof(*lists) + lists->nlist * (sizeof(lists->codes[0]) + sizeof(lists->ids[0])));
        for (size_t i = 0; i < lists->nlist; i++)
            bytes += (int64_t)(lists->codes[i].capacity() + lists->ids[i].capacity() * sizeof(idx_t));
    }
    if (auto q = dynamic_cast<const faiss::IndexFlat *>(ivf->quantizer))
        bytes += (int64_t)(sizeof(*q) + q->codes.capacity());
    if (auto sq = dynamic_cast<const faiss::IndexIVFScalarQuantizer *>(ivf))
        bytes += (int64_t)(sq->sq.trained.capacity() * sizeof(float));
    return bytes;
}

int zs_faiss_write_fd(const zs_faiss_index *index, int fd, char *err, size_t err_cap) {
    return guarded(err, err_cap, [&] {
        if (!index || fd < 0) throw ShimError("bad argument");
        FdWriter writer(fd);
        try {
            faiss::write_index(index->ivf.get(), &writer);
        } catch (...) {
            if (writer.error) throw ShimError(strerror(writer.error));
            throw;
        }
        if (writer.error) throw ShimError(strerror(writer.error));
        uint8_t trailer[kTrailer];
        memcpy(trailer, kMagic, 8);
        putU64(trailer + 8, writer.bytes);
        putU64(trailer + 16, (uint64_t)writer.crc);
        if (!writeAll(fd, trailer, kTrailer)) throw ShimError(strerror(errno ? errno : EIO));
    });
}

int zs_faiss_read_path(const char *path, zs_faiss_index **out, char *err, size_t err_cap) {
    if (out) *out = nullptr;
    return guarded(err, err_cap, [&] {
        if (!path || !out) throw ShimError("bad argument");
        Fd file{::open(path, O_RDONLY | O_CLOEXEC)};
        if (file.fd < 0) throw ShimError(strerror(errno));
        struct stat st;
        if (fstat(file.fd, &st) != 0) throw ShimError(strerror(errno));
        if (!S_ISREG(st.st_mode)) throw ShimError("not a regular file");
        uint64_t size = (uint64_t)st.st_size;
        uint8_t trailer[kTrailer];
        if (size < kTrailer || !preadAll(file.fd, trailer, kTrailer, (off_t)(size - kTrailer)) ||
            memcmp(trailer, kMagic, 8) != 0)
            throw ShimError("not a zeroseg ANN index (no ZSFAISS1 trailer; truncated or another format)");
        uint64_t length = getU64(trailer + 8);
        if (length != size - kTrailer)
            throw ShimError("truncated or padded: the trailer says " + std::to_string(length) +
                            " bytes of index, the file holds " + std::to_string(size - kTrailer));
        // Checksum first, so that FAISS only ever parses bytes that were written as they are.
        std::unique_ptr<uint8_t[]> buffer(new uint8_t[1 << 20]);
        uLong crc = crc32(0L, Z_NULL, 0);
        for (uint64_t at = 0; at < length;) {
            size_t n = (size_t)std::min<uint64_t>(length - at, 1 << 20);
            if (!preadAll(file.fd, buffer.get(), n, (off_t)at))
                throw ShimError(errno ? strerror(errno) : "file shrank while reading");
            crc = crcUpdate(crc, buffer.get(), n);
            at += n;
        }
        if ((uint64_t)crc != getU64(trailer + 16)) throw ShimError("checksum mismatch (the file is corrupt)");
        buffer.reset();
        FdReader reader(file.fd, length);
        std::unique_ptr<faiss::Index> loaded;
        try {
            loaded.reset(faiss::read_index(&reader, 0));
        } catch (...) {
            if (reader.error) throw ShimError(strerror(reader.error));
            throw;
        }
        if (reader.position != length) throw ShimError("unexpected data after the index");
        auto ivf = dynamic_cast<faiss::IndexIVF *>(loaded.get());
        if (!ivf) throw ShimError("not a zeroseg ANN index: not an IVF index");
        checkLoaded(ivf);
        loaded.release();
        auto handle = std::make_unique<zs_faiss_index>();
        handle->ivf.reset(ivf);
        *out = handle.release();
    });
}

} // extern "C"
