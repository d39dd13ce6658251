// See include/zs_image_shim.h: writing PNG files with libpng, errors returned (setjmp)
// instead of libpng's default abort.
#include "zs_image_shim.h"

#include <errno.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <png.h>

typedef struct {
    int fd;           // >= 0: write to this file descriptor; -1: append to buf
    uint8_t *buf;     // the memory writer's output (malloc'd, grown by doubling)
    size_t len, cap;
    jmp_buf jump;
    char message[256];
} zs_png_writer;

static void zs_png_write_error(png_structp png, png_const_charp msg) {
    zs_png_writer *w = (zs_png_writer *)png_get_error_ptr(png);
    // An I/O error already wrote its own message (with errno's text); keep it.
    if (w->message[0] == 0) snprintf(w->message, sizeof w->message, "%s", msg ? msg : "libpng error");
    longjmp(w->jump, 1);
}

static void zs_png_write_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void zs_png_write_data(png_structp png, png_bytep data, size_t count) {
    zs_png_writer *w = (zs_png_writer *)png_get_io_ptr(png);
    if (w->fd < 0) {
        if (count > SIZE_MAX / 2 - w->len) png_error(png, "PNG too large for memory");
        if (w->len + count > w->cap) {
            size_t cap = w->cap ? w->cap : 65536;
            while (cap < w->len + count) cap *= 2;
            uint8_t *grown = (uint8_t *)realloc(w->buf, cap);
            if (!grown) {
                snprintf(w->message, sizeof w->message, "out of memory encoding PNG");
                png_error(png, w->message);
            }
            w->buf = grown;
            w->cap = cap;
        }
        memcpy(w->buf + w->len, data, count);
        w->len += count;
        return;
    }
    while (count > 0) {
        ssize_t n = write(w->fd, data, count);
        if (n < 0) {
            if (errno == EINTR) continue;
            snprintf(w->message, sizeof w->message, "%s", strerror(errno));
            png_error(png, w->message);
        }
        data += n;
        count -= (size_t)n;
    }
}

static void zs_png_write_flush(png_structp png) { (void)png; }

// fd >= 0: writes to fd; fd < 0: into a malloc'd buffer returned in *out / *out_len (the
// caller frees it; NULL on failure).
static int zs_png_write_any(int fd, uint32_t width, uint32_t height, int color_type,
                            const uint8_t *plte, int plte_count, const uint8_t *pixels,
                            uint8_t **out, size_t *out_len, char *message, size_t message_len) {
    // volatile: modified between setjmp and a possible longjmp.
    zs_png_writer *volatile w = NULL;
    png_structp volatile png = NULL;
    png_infop volatile info = NULL;
    png_bytep *volatile rows = NULL;
    int result = -1;

    if (message_len > 0) message[0] = 0;
    if (color_type != PNG_COLOR_TYPE_PALETTE && color_type != PNG_COLOR_TYPE_RGB &&
        color_type != PNG_COLOR_TYPE_GRAY) {
        snprintf(message, message_len, "unsupported PNG colour type %d", color_type);
        return -1;
    }
    if (color_type == PNG_COLOR_TYPE_PALETTE && (plte == NULL || plte_count < 1 || plte_count > 256)) {
        snprintf(message, message_len, "a PNG palette needs 1...256 entries, not %d", plte_count);
        return -1;
    }
    w = (zs_png_writer *)calloc(1, sizeof(zs_png_writer));
    if (w) w->fd = fd;
    if (out) *out = NULL;
    if (out_len) *out_len = 0;
    if (w) rows = (png_bytep *)malloc(sizeof(png_bytep) * (height ? height : 1));
    if (w) png = png_create_write_struct(PNG_LIBPNG_VER_STRING, w, zs_png_write_error, zs_png_write_warning);
    if (png) info = png_create_info_struct(png);
    if (!w || !rows || !png || !info) {
        snprintf(message, message_len, "out of memory starting libpng");
        goto done;
    }
    if (setjmp(w->jump)) {
        snprintf(message, message_len, "%s", w->message);
        goto done;
    }
    png_set_write_fn(png, w, zs_png_write_data, zs_png_write_flush);
    png_set_IHDR(png, info, width, height, 8, color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_color colors[256];
        for (int i = 0; i < plte_count; i++) {
            colors[i].red = plte[3 * i];
            colors[i].green = plte[3 * i + 1];
            colors[i].blue = plte[3 * i + 2];
        }
        png_set_PLTE(png, info, colors, plte_count);
        // Filtering rarely helps indexed images (PNG spec recommendation).
        png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_NONE);
    }
    size_t row_bytes = (size_t)width * (color_type == PNG_COLOR_TYPE_RGB ? 3 : 1);
    for (uint32_t y = 0; y < height; y++) rows[y] = (png_bytep)(pixels + (size_t)y * row_bytes);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    result = 0;
    if (fd < 0 && out && out_len) {
        *out = w->buf;
        *out_len = w->len;
        w->buf = NULL;
    }

done:
    if (png) {
        png_structp p = png;
        png_infop i = info;
        png_destroy_write_struct(&p, i ? &i : NULL);
    }
    free(rows);
    if (w) free(w->buf);
    free(w);
    return result;
}

int zs_png_write_fd(int fd, uint32_t width, uint32_t height, int color_type,
                    const uint8_t *plte, int plte_count, const uint8_t *pixels,
                    char *message, size_t message_len) {
    if (fd < 0) {
        snprintf(message, message_len, "bad file descriptor %d", fd);
        return -1;
    }
    return zs_png_write_any(fd, width, height, color_type, plte, plte_count, pixels, NULL, NULL,
                            message, message_len);
}

int zs_png_write_mem(uint32_t width, uint32_t height, int color_type,
                     const uint8_t *plte, int plte_count, const uint8_t *pixels,
                     uint8_t **out, size_t *out_len, char *message, size_t message_len) {
    return zs_png_write_any(-1, width, height, color_type, plte, plte_count, pixels, out, out_len,
                            message, message_len);
}
