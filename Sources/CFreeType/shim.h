// FreeType 2 (Debian: libfreetype-dev; headers in /usr/include/freetype2, found with
// pkg-config freetype2). Used to draw the overlay legend's text.
#include <ft2build.h>
#include FT_FREETYPE_H

// FT_LOAD_* are macros Swift may not import; the one zeroseg needs, as a constant.
static const FT_Int32 ZS_FT_LOAD_RENDER = FT_LOAD_RENDER;
