/* sock: the sock programs (to be written). */
#include "proxy.h"

char _license[] SEC("license") = "GPL";
