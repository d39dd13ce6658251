// zeroseg: the smallest C layer needed to call libjpeg and libpng safely from Swift.
//
// Both libraries report fatal errors by calling a handler that must not return; the only
// portable way out is setjmp/longjmp, which Swift cannot do. Each function here wraps one
// library call with setjmp, so an error in a corrupt file comes back as a nonzero return
// and a one-line message (zs_*_message) instead of exit() or a crash.
//
// Types are opaque (void *) on purpose: Swift sees libjpeg's and libpng's own types
// through the CJPEG and CPNG modules, and casts the pointers returned by zs_jpeg_cinfo,
// zs_png_ptr and zs_png_info.
#ifndef ZS_IMAGE_SHIM_H
#define ZS_IMAGE_SHIM_H

#include <stddef.h>
#include <stdint.h>

// ---- libjpeg (libjpeg-turbo, jpeglib.h) ----
typedef struct zs_jpeg zs_jpeg;

/// Allocates a decompressor reading `len` bytes at `data` (not copied; keep it alive).
/// APP1 markers (Exif, XMP) are saved for the caller. NULL when out of memory.
zs_jpeg *zs_jpeg_create(const uint8_t *data, size_t len);
void zs_jpeg_destroy(zs_jpeg *j);
/// The `struct jpeg_decompress_struct *` inside `j`.
void *zs_jpeg_cinfo(zs_jpeg *j);
/// Message of the last error ("" if none).
const char *zs_jpeg_message(const zs_jpeg *j);
/// jpeg_read_header(cinfo, TRUE). 0 on success.
int zs_jpeg_read_header(zs_jpeg *j);
/// jpeg_start_decompress. 0 on success.
int zs_jpeg_start(zs_jpeg *j);
/// jpeg_read_scanlines into rows[0..<count]; *got = rows read. 0 on success.
int zs_jpeg_read_scanlines(zs_jpeg *j, uint8_t **rows, unsigned int count, unsigned int *got);
/// jpeg_finish_decompress. 0 on success.
int zs_jpeg_finish(zs_jpeg *j);

// ---- libpng 1.6 (png.h) ----
typedef struct zs_png zs_png;

/// Allocates a reader over `len` bytes at `data` (not copied). NULL when out of memory.
zs_png *zs_png_create(const uint8_t *data, size_t len);
void zs_png_destroy(zs_png *p);
/// png_structp and png_infop of `p`.
void *zs_png_ptr(zs_png *p);
void *zs_png_info(zs_png *p);
const char *zs_png_message(const zs_png *p);
/// png_read_info. 0 on success.
int zs_png_read_info(zs_png *p);
/// png_read_update_info. 0 on success.
int zs_png_update_info(zs_png *p);
/// png_read_image(rows). 0 on success.
int zs_png_read_image(zs_png *p, uint8_t **rows);
/// png_read_end(info). 0 on success.
int zs_png_read_end(zs_png *p);

// ---- libpng 1.6 writing (zs_png_write.c) ----

/// Writes a complete 8-bit, non-interlaced PNG to the open file descriptor `fd` (not closed).
/// color_type: PNG_COLOR_TYPE_PALETTE (3; `pixels` holds one index per pixel and `plte`
/// holds `plte_count` RGB triples, 1...256), PNG_COLOR_TYPE_RGB (2; `pixels` holds RGB
/// triples; `plte` ignored) or PNG_COLOR_TYPE_GRAY (0; one byte per pixel; `plte` ignored).
/// `pixels` is row-major without padding.
/// Returns 0 on success; otherwise nonzero with a one-line reason in `message`.
int zs_png_write_fd(int fd, uint32_t width, uint32_t height, int color_type,
                    const uint8_t *plte, int plte_count, const uint8_t *pixels,
                    char *message, size_t message_len);

/// The same PNG into memory: on success (0) `*out` holds `*out_len` bytes from malloc, which
/// the caller frees; on failure `*out` is NULL and `message` says why.
int zs_png_write_mem(uint32_t width, uint32_t height, int color_type,
                     const uint8_t *plte, int plte_count, const uint8_t *pixels,
                     uint8_t **out, size_t *out_len, char *message, size_t message_len);

#endif
