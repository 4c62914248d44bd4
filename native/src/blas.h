// OpenBLAS's cblas.h also declares openblas_set_num_threads, which attention
// uses to run many small GEMMs one per thread.
#pragma once
#include <cblas.h>
