#pragma once
// pkg-config openblas adds -I.../openblas-pthread; that cblas.h also declares openblas_set_num_threads.
#include <cblas.h>
