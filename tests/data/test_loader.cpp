// placeholder while the reader lands
#include <gtest/gtest.h>
