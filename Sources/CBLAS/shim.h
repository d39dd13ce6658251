// OpenBLAS's cblas.h (Debian: libopenblas-dev, /usr/include/x86_64-linux-gnu/cblas.h);
// it also declares openblas_set_num_threads / openblas_get_num_threads.
#include <cblas.h>
