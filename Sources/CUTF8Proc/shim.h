// utf8proc (Debian: libutf8proc-dev)
#include <utf8proc.h>
