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
//   image handle opened through the C API.
//
// Every function is noexcept at the ABI: C++ exceptions (only std::bad_alloc can come from
// what is called here) become -ENOMEM / a null pointer.
//
// Built by rbd-core/build.rs with the `cc` crate (C++17, headers from Debian's
// librbd-dev and libradospp-dev).

#include <rados/buffer.h>
#include <rbd/librbd.h>
#include <rbd/librbd.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>

using ceph::bufferlist;

namespace {

// librbd::Image keeps its handle in the private member `ctx`, an `image_ctx_t`. It is the
// same pointer the C API hands out as rbd_image_t (both are librbd::ImageCtx*; librbd.cc
// casts either one to ImageCtx* and nothing else). The C++ API has no constructor from a C
// handle, so the handle is placed into an Image through a pointer to that member, taken
// with the explicit-instantiation rule: access checking does not apply to the template
// arguments of an explicit instantiation ([temp.spec.general]/6 in C++20, [temp.explicit]
// /12 in C++17). This depends only on the member's name and type in the public header,
// not on the class layout.
struct ImageCtxMember {
  using type = librbd::image_ctx_t librbd::Image::*;
};
template <typename Tag, typename Tag::type Member>
struct ExposeMember {
  friend typename Tag::type member_of(Tag) { return Member; }
};
ImageCtxMember::type member_of(ImageCtxMember);
template struct ExposeMember<ImageCtxMember, &librbd::Image::ctx>;

// A librbd::Image that borrows a C handle for one call. Its destructor runs
// Image::~Image, which closes the handle unless `ctx` is null, so the handle is taken
// back out first: the caller keeps owning it.
class BorrowedImage {
 public:
  explicit BorrowedImage(rbd_image_t handle) { image_.*member_of(ImageCtxMember{}) = handle; }
  ~BorrowedImage() { image_.*member_of(ImageCtxMember{}) = nullptr; }
  BorrowedImage(const BorrowedImage&) = delete;
  BorrowedImage& operator=(const BorrowedImage&) = delete;
  librbd::Image& get() { return image_; }

 private:
  librbd::Image image_;
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
    auto* list = as_list(out);
    list->clear();
    BorrowedImage img(image);
    // rbd_completion_t is a librbd::RBD::AioCompletion* (rbd_aio_create_completion
    // creates one and casts it).
    return img.get().aio_read2(off, len, *list, static_cast<librbd::RBD::AioCompletion*>(c),
                               op_flags);
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
    bufferlist piece;
    piece.substr_of(*list, static_cast<unsigned>(data_off), static_cast<unsigned>(len));
    BorrowedImage img(image);
    return img.get().aio_write2(off, len, piece, static_cast<librbd::RBD::AioCompletion*>(c),
                                op_flags);
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

}  // extern "C"
