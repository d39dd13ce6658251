// zlib (Debian: zlib1g-dev), for the gzipped BPE vocabulary
#include <zlib.h>
