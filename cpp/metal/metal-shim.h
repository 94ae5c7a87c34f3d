// C++ stand-ins for the Metal Shading Language features that lowbit-metal.h uses, so that the
// same source compiles as C++ on a machine without Metal (tests/cpp/test_metal_shim.cpp).
//
// Only what the shared code needs, with Metal's meaning:
//   - the address spaces device / thread / constant / threadgroup (one flat memory here);
//   - half: IEEE binary16, float -> half rounds to nearest even, like Metal's conversion;
//   - float4x4 / half4x4: four columns of four; m[c][r] is row r of column c, and a 4x4 in
//     memory is its 16 elements column after column (element i at m[i / 4][i % 4]);
//   - uchar / ushort / uint and the math functions round (halves away from zero), fabs, fmax.
// Compile with -fno-strict-aliasing: the kernels read blocks through casted pointers, as
// Metal code does.

#ifndef BONSAI_METAL_SHIM_H
#define BONSAI_METAL_SHIM_H

#include <cmath>
#include <cstdint>

#define device
#define thread
#define constant
#define threadgroup

typedef _Float16 half;
typedef unsigned char  uchar;
typedef unsigned short ushort;
typedef unsigned int   uint;

using std::fabs;
using std::fmax;
using std::round;

template <typename T>
struct metal_vec4 {
    T v[4];

    T &       operator[](int i)       { return v[i]; }
    const T & operator[](int i) const { return v[i]; }
};

template <typename T>
struct metal_mat4x4 {
    metal_vec4<T> columns[4];

    metal_mat4x4() = default;

    // (half4x4) a_float4x4: element-wise conversion
    template <typename U>
    explicit metal_mat4x4(const metal_mat4x4<U> & other) {
        for (int c = 0; c < 4; c++) {
            for (int r = 0; r < 4; r++) {
                columns[c][r] = (T) other[c][r];
            }
        }
    }

    metal_vec4<T> &       operator[](int c)       { return columns[c]; }
    const metal_vec4<T> & operator[](int c) const { return columns[c]; }
};

typedef metal_mat4x4<float> float4x4;
typedef metal_mat4x4<half>  half4x4;

static_assert(sizeof(half) == 2, "half is 2 bytes");
static_assert(sizeof(float4x4) == 64 && sizeof(half4x4) == 32, "4x4 matrices are 16 packed elements");

#endif  // BONSAI_METAL_SHIM_H
