// libjpeg-turbo (Debian: libjpeg-dev -> libjpeg62-turbo-dev)
#include <stdio.h>
#include <stddef.h>
#include <jpeglib.h>
#include <jerror.h>
