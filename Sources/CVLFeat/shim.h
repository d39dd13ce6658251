// VLFeat 0.9.21 (Debian: libvlfeat-dev): SLIC superpixels.
#include <vl/slic.h>
