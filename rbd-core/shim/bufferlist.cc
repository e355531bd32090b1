// rbd-core's C++ shim: zero-copy image I/O through librbd's bufferlist API.
//
// librbd's C API copies every byte: rbd_aio_write* copies the caller's buffer into a
// bufferlist, and rbd_aio_read* copies the bufferlist the OSD reply arrived in into the
// caller's buffer. The C++ API (librbd::Image::aio_write2 / aio_read2) takes and fills
// ceph::bufferlist objects instead, whose segments are reference counted and shared, not
// copied. This file exposes exactly that, with a C ABI, to rbd-core's Rust `Buffer`
// (src/rbd/buffer.rs), and nothing else:
//
// * rbdcore_buf_*: an owned, heap-allocated ceph::bufferlist (create, share, inspect,
//   free);
// * rbdcore_aio_read / rbdcore_aio_write: librbd::Image::aio_read2 / aio_write2 on an
//   image handle opened through the C API (looked up with dlsym, so this file does not
//   need librbd at link time; -ENOSYS if librbd lacks them).
//
// Every function is noexcept at the ABI: C++ exceptions (only std::bad_alloc can come from
// what is called here) become -ENOMEM / a null pointer.
//
// Built by rbd-core/build.rs with the `cc` crate (C++17, headers from Debian's
// librbd-dev and libradospp-dev).

#include <rados/buffer.h>
#include <rbd/librbd.h>
#include <rbd/librbd.hpp>

#include <dlfcn.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>

using ceph::bufferlist;

namespace {

// librbd::Image is exactly its handle: its one data member, `ctx`, is the ImageCtx pointer
// that the C API hands out as rbd_image_t (librbd.cc casts either one to ImageCtx* and
// nothing else), and it has no virtual functions or bases.
static_assert(std::is_standard_layout<librbd::Image>::value &&
                  sizeof(librbd::Image) == sizeof(rbd_image_t),
              "librbd::Image is no longer just its ImageCtx pointer");

// librbd::Image::aio_read2 / aio_write2 are called through addresses looked up with
// dlsym, not linked: rbd-core may load librbd only on first use (dlopen), so nothing in
// this file may need librbd at link time. By the Itanium C++ ABI (x86-64, aarch64, ...),
// a non-virtual member function is called like a free function whose first argument is
// `this` and whose reference parameters are pointers; these are those signatures.
using AioRead2 = int (*)(librbd::Image* self, uint64_t off, size_t len, bufferlist* bl,
                         librbd::RBD::AioCompletion* c, int op_flags);
using AioWrite2 = AioRead2;

// The Itanium manglings of the two declarations in <rbd/librbd.hpp>:
//   int Image::aio_read2(uint64_t off, size_t len, ceph::bufferlist& bl,
//                        RBD::AioCompletion* c, int op_flags);
//   int Image::aio_write2(uint64_t off, size_t len, ceph::bufferlist& bl,
//                         RBD::AioCompletion* c, int op_flags);
// with bufferlist = ceph::buffer::v15_2_0::list (the inline namespace of Ceph 15.2 and
// later). The static_asserts below tie the types to the headers we compile against.
constexpr const char* kAioRead2 =
    "_ZN6librbd5Image9aio_read2EmmRN4ceph6buffer7v15_2_04listEPNS_3RBD13AioCompletionEi";
constexpr const char* kAioWrite2 =
    "_ZN6librbd5Image10aio_write2EmmRN4ceph6buffer7v15_2_04listEPNS_3RBD13AioCompletionEi";
static_assert(std::is_same<ceph::bufferlist, ceph::buffer::v15_2_0::list>::value,
              "bufferlist's inline namespace changed: update the manglings");
static_assert(std::is_same<decltype(&librbd::Image::aio_read2),
                           int (librbd::Image::*)(uint64_t, size_t, ceph::bufferlist&,
                                                  librbd::RBD::AioCompletion*, int)>::value,
              "Image::aio_read2's signature changed: update the mangling");
static_assert(std::is_same<decltype(&librbd::Image::aio_write2),
                           int (librbd::Image::*)(uint64_t, size_t, ceph::bufferlist&,
                                                  librbd::RBD::AioCompletion*, int)>::value,
              "Image::aio_write2's signature changed: update the mangling");
static_assert(std::is_same<uint64_t, unsigned long>::value &&
                  std::is_same<size_t, unsigned long>::value,
              "the manglings assume uint64_t and size_t are unsigned long ('m')");

// Looks `name` up among the loaded libraries (librbd is loaded, linked or with
// RTLD_GLOBAL, whenever an image is open), caching a success.
void* resolve(std::atomic<void*>& cache, const char* name) {
  void* f = cache.load(std::memory_order_acquire);
  if (f == nullptr) {
    f = dlsym(RTLD_DEFAULT, name);
    if (f != nullptr) cache.store(f, std::memory_order_release);
  }
  return f;
}

std::atomic<void*> aio_read2_fn{nullptr};
std::atomic<void*> aio_write2_fn{nullptr};

// An Image-shaped view of a C handle: the `this` for one call. The called functions only
// read `ctx` (they never close or replace it), and the handle stays owned by the caller.
struct ImageView {
  alignas(librbd::Image) unsigned char bytes[sizeof(librbd::Image)];
  explicit ImageView(rbd_image_t handle) { std::memcpy(bytes, &handle, sizeof handle); }
  librbd::Image* get() { return reinterpret_cast<librbd::Image*>(bytes); }
};

bufferlist* as_list(void* p) { return static_cast<bufferlist*>(p); }
const bufferlist* as_list(const void* p) { return static_cast<const bufferlist*>(p); }

bool fits_unsigned(size_t n) { return n <= std::numeric_limits<unsigned>::max(); }

}  // namespace

extern "C" {

// A new list of `len` zeroed bytes in one page-aligned segment; null on ENOMEM or when
// `len` does not fit a segment (4 GiB).
void* rbdcore_buf_new(size_t len) noexcept {
  if (!fits_unsigned(len)) return nullptr;
  try {
    auto* bl = new bufferlist;
    if (len > 0) {
      bl->push_back(ceph::buffer::create_page_aligned(static_cast<unsigned>(len)));
      bl->zero();
    }
    return bl;
  } catch (...) {
    return nullptr;
  }
}

// A new list holding a copy of `len` bytes at `data`, in one segment; null on ENOMEM or
// when `len` does not fit a segment.
void* rbdcore_buf_copy(const char* data, size_t len) noexcept {
  if (!fits_unsigned(len)) return nullptr;
  try {
    auto* bl = new bufferlist;
    if (len > 0) {
      bl->push_back(ceph::buffer::copy(data, static_cast<unsigned>(len)));
    }
    return bl;
  } catch (...) {
    return nullptr;
  }
}

// A new list that shares `other`'s segments (no data is copied); null on ENOMEM.
void* rbdcore_buf_share(const void* other) noexcept {
  try {
    return new bufferlist(*as_list(other));
  } catch (...) {
    return nullptr;
  }
}

// Moves `src`'s segments to the end of `dst` (no data is copied); `src` is left empty.
// 0, or -ENOMEM.
int rbdcore_buf_append(void* dst, void* src) noexcept {
  try {
    as_list(dst)->claim_append(*as_list(src));
    return 0;
  } catch (...) {
    return -ENOMEM;
  }
}

void rbdcore_buf_free(void* bl) noexcept { delete as_list(bl); }

size_t rbdcore_buf_len(const void* bl) noexcept { return as_list(bl)->length(); }

// Makes the list one segment (copying only if it is made of several) and returns its
// first byte; null for an empty list, or on ENOMEM (then the list is unchanged).
char* rbdcore_buf_contiguous(void* bl) noexcept {
  try {
    auto* list = as_list(bl);
    if (list->length() == 0) return nullptr;
    return list->c_str();
  } catch (...) {
    return nullptr;
  }
}

// 1 if no other list (ours or librbd's) holds a reference to any of this list's segments,
// so its bytes may be written; then any checksum cached for them is dropped. 0 otherwise.
int rbdcore_buf_make_writable(void* bl) noexcept {
  auto* list = as_list(bl);
  for (const auto& p : list->buffers()) {
    if (p.raw_nref() != 1) return 0;
  }
  list->invalidate_crc();
  return 1;
}

// librbd::Image::aio_read2 into `out` (emptied first): when `c` completes with a
// non-negative value, `out` holds the bytes read.
int rbdcore_aio_read(rbd_image_t image, uint64_t off, size_t len, void* out,
                     rbd_completion_t c, int op_flags) noexcept {
  try {
    auto f = reinterpret_cast<AioRead2>(resolve(aio_read2_fn, kAioRead2));
    if (f == nullptr) return -ENOSYS;
    auto* list = as_list(out);
    list->clear();
    ImageView img(image);
    // rbd_completion_t is a librbd::RBD::AioCompletion* (rbd_aio_create_completion
    // creates one and casts it).
    return f(img.get(), off, len, list, static_cast<librbd::RBD::AioCompletion*>(c), op_flags);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

// librbd::Image::aio_write2 of bytes [data_off, data_off + len) of `data`, shared with
// librbd (not copied); librbd drops its references when it is done with them, which may
// be after `c` completes.
int rbdcore_aio_write(rbd_image_t image, uint64_t off, const void* data, size_t data_off,
                      size_t len, rbd_completion_t c, int op_flags) noexcept {
  try {
    const auto* list = as_list(data);
    if (!fits_unsigned(data_off) || !fits_unsigned(len) ||
        data_off + len > list->length()) {
      return -EINVAL;
    }
    auto f = reinterpret_cast<AioWrite2>(resolve(aio_write2_fn, kAioWrite2));
    if (f == nullptr) return -ENOSYS;
    bufferlist piece;
    piece.substr_of(*list, static_cast<unsigned>(data_off), static_cast<unsigned>(len));
    ImageView img(image);
    return f(img.get(), off, len, &piece, static_cast<librbd::RBD::AioCompletion*>(c),
             op_flags);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

}  // extern "C"
