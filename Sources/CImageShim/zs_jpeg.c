// See include/zs_image_shim.h.
#include "zs_image_shim.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

struct zs_jpeg {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int created;
    char message[JMSG_LENGTH_MAX];
};

static void zs_jpeg_error_exit(j_common_ptr cinfo) {
    zs_jpeg *j = (zs_jpeg *)cinfo->client_data;
    (*cinfo->err->format_message)(cinfo, j->message);
    longjmp(j->jump, 1);
}

// Warnings (msg_level -1) that mean the pixels are not what the file intended: the data
// ended early (libjpeg then pads with grey) or the entropy-coded data is corrupt. These
// become errors; harmless warnings (extraneous bytes between markers, odd JFIF version,
// bogus ICC or progression details) are ignored, as Pillow ignores them.
static void zs_jpeg_emit_message(j_common_ptr cinfo, int msg_level) {
    if (msg_level != -1) return;  // trace messages
    switch (cinfo->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_ARITH_BAD_CODE:
    case JWRN_MUST_RESYNC:
        zs_jpeg_error_exit(cinfo);
        break;
    default:
        cinfo->err->num_warnings++;
        break;
    }
}

static void zs_jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

zs_jpeg *zs_jpeg_create(const uint8_t *data, size_t len) {
    zs_jpeg *j = (zs_jpeg *)calloc(1, sizeof(zs_jpeg));
    if (!j) return NULL;
    j->cinfo.err = jpeg_std_error(&j->pub);
    j->pub.error_exit = zs_jpeg_error_exit;
    j->pub.emit_message = zs_jpeg_emit_message;
    j->pub.output_message = zs_jpeg_output_message;
    if (setjmp(j->jump)) {
        if (j->created) jpeg_destroy_decompress(&j->cinfo);
        free(j);
        return NULL;
    }
    jpeg_create_decompress(&j->cinfo);
    j->created = 1;
    j->cinfo.client_data = j;
    jpeg_mem_src(&j->cinfo, data, (unsigned long)len);
    jpeg_save_markers(&j->cinfo, JPEG_APP0 + 1, 0xFFFF);
    return j;
}

void zs_jpeg_destroy(zs_jpeg *j) {
    if (!j) return;
    if (j->created) jpeg_destroy_decompress(&j->cinfo);
    free(j);
}

void *zs_jpeg_cinfo(zs_jpeg *j) { return &j->cinfo; }

const char *zs_jpeg_message(const zs_jpeg *j) { return j->message; }

int zs_jpeg_read_header(zs_jpeg *j) {
    if (setjmp(j->jump)) return -1;
    jpeg_read_header(&j->cinfo, TRUE);
    return 0;
}

int zs_jpeg_start(zs_jpeg *j) {
    if (setjmp(j->jump)) return -1;
    jpeg_start_decompress(&j->cinfo);
    return 0;
}

int zs_jpeg_read_scanlines(zs_jpeg *j, uint8_t **rows, unsigned int count, unsigned int *got) {
    *got = 0;
    if (setjmp(j->jump)) return -1;
    *got = jpeg_read_scanlines(&j->cinfo, rows, count);
    return 0;
}

int zs_jpeg_finish(zs_jpeg *j) {
    if (setjmp(j->jump)) return -1;
    jpeg_finish_decompress(&j->cinfo);
    return 0;
}
