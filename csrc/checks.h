// Input checks whose messages name the op, the tensor and the expected value.
#pragma once
#include <torch/all.h>

#define DSPARK_CHECK_DTYPE(op, t, dt)                                                            \
  TORCH_CHECK((t).scalar_type() == (dt), "dspark." op ": " #t " must have dtype ", (dt),         \
              "; got ", (t).scalar_type())

#define DSPARK_CHECK_DIM(op, t, d)                                                               \
  TORCH_CHECK((t).dim() == (d), "dspark." op ": " #t " must be ", (d), "-D; got shape ", (t).sizes())

#define DSPARK_CHECK_SIZE(op, t, dim, expected, what)                                            \
  TORCH_CHECK((t).size(dim) == (expected), "dspark." op ": " #t ".size(", (dim), ") must be ",    \
              (expected), " (" what "); got ", (t).size(dim))

#define DSPARK_CHECK_SAME_DEVICE(op, t, ref)                                                      \
  TORCH_CHECK((t).device() == (ref).device(), "dspark." op ": " #t " must be on ", (ref).device(), \
              " like " #ref "; got ", (t).device())
