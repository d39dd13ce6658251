// See include/zs_image_shim.h.
#include "zs_image_shim.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <png.h>

struct zs_png {
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t len;
    size_t pos;
    jmp_buf jump;
    char message[200];
};

static void zs_png_error(png_structp png, png_const_charp msg) {
    zs_png *p = (zs_png *)png_get_error_ptr(png);
    snprintf(p->message, sizeof p->message, "%s", msg ? msg : "libpng error");
    longjmp(p->jump, 1);
}

static void zs_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void zs_png_read(png_structp png, png_bytep out, size_t count) {
    zs_png *p = (zs_png *)png_get_io_ptr(png);
    if (count > p->len - p->pos) png_error(png, "file is truncated");
    memcpy(out, p->data + p->pos, count);
    p->pos += count;
}

zs_png *zs_png_create(const uint8_t *data, size_t len) {
    zs_png *p = (zs_png *)calloc(1, sizeof(zs_png));
    if (!p) return NULL;
    p->data = data;
    p->len = len;
    p->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, p, zs_png_error, zs_png_warning);
    if (!p->png) {
        free(p);
        return NULL;
    }
    p->info = png_create_info_struct(p->png);
    if (!p->info) {
        png_destroy_read_struct(&p->png, NULL, NULL);
        free(p);
        return NULL;
    }
    png_set_read_fn(p->png, p, zs_png_read);
    return p;
}

void zs_png_destroy(zs_png *p) {
    if (!p) return;
    png_destroy_read_struct(&p->png, &p->info, NULL);
    free(p);
}

void *zs_png_ptr(zs_png *p) { return p->png; }
void *zs_png_info(zs_png *p) { return p->info; }
const char *zs_png_message(const zs_png *p) { return p->message; }

int zs_png_read_info(zs_png *p) {
    if (setjmp(p->jump)) return -1;
    png_read_info(p->png, p->info);
    return 0;
}

int zs_png_update_info(zs_png *p) {
    if (setjmp(p->jump)) return -1;
    png_read_update_info(p->png, p->info);
    return 0;
}

int zs_png_read_image(zs_png *p, uint8_t **rows) {
    if (setjmp(p->jump)) return -1;
    png_read_image(p->png, rows);
    return 0;
}

int zs_png_read_end(zs_png *p) {
    if (setjmp(p->jump)) return -1;
    png_read_end(p->png, p->info);
    return 0;
}
