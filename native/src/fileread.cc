// read_whole_file: one anonymous mapping per file, filled by pread on this thread and one helper.
#include "fileread.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "threadpool.h"

namespace lx {
namespace {

// Files from this size are read as two halves on two threads: populating fresh pages and copying from the page
// cache are both per-core costs (a 28.7 MB adapter: 14 ms on one thread, 7.6 on two).
constexpr size_t kSplitBytes = size_t(4) << 20;

// Populates [from, to) of data (in one call where the kernel offers it) and reads the file's bytes there;
// *got is how many arrived (fewer at end of file). Returns 0 or the errno.
int read_range(int fd, uint8_t* data, size_t from, size_t to, size_t* got) {
#ifdef MADV_POPULATE_WRITE
  if (to > from) ::madvise(data + from, to - from, MADV_POPULATE_WRITE);  // best effort: pread faults otherwise
#endif
  size_t off = from;
  while (off < to) {
    const ssize_t n = ::pread(fd, data + off, to - off, off_t(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) break;
    off += size_t(n);
  }
  *got = off - from;
  return 0;
}

Status os_error(const std::string& what, const std::string& path, int err) {
  return Status::Io(what + " " + path + ": " + std::strerror(err));
}

}  // namespace

Status read_whole_file(const std::string& path, bool huge_pages, FileBytes* out) {
  *out = FileBytes{};
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return os_error("cannot open", path, errno);
  struct stat sb;
  if (::fstat(fd, &sb) != 0) {
    const int err = errno;
    ::close(fd);
    return os_error("cannot stat", path, err);
  }
  const size_t size = size_t(sb.st_size);
  if (size == 0) return ::close(fd), Status::Ok();
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    return os_error("cannot map " + std::to_string(size) + " bytes of memory for", path, err);
  }
  uint8_t* data = static_cast<uint8_t*>(p);
#ifdef MADV_HUGEPAGE
  if (huge_pages) ::madvise(data, size, MADV_HUGEPAGE);  // best effort: 4 KiB pages where the kernel says no
#endif
  const size_t half = size >= kSplitBytes && std::thread::hardware_concurrency() > 1 ? size / 2 / 4096 * 4096 : size;
  int err_front = 0, err_back = 0;
  size_t got_front = 0, got_back = 0;
  auto front = [&] { err_front = read_range(fd, data, 0, half, &got_front); };
  if (half < size) run_beside(front, [&] { err_back = read_range(fd, data, half, size, &got_back); });
  else front();
  ::close(fd);
  if (err_front || err_back) {
    ::munmap(data, size);
    return os_error("cannot read", path, err_front ? err_front : err_back);
  }
  out->data = data;
  out->mapped = size;
  // A file that shrank while read ends at the first short range: the parser reports the truncation.
  out->size = got_front < half ? got_front : half + got_back;
  return Status::Ok();
}

size_t available_memory_bytes() {
  size_t avail = 0;
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
        avail = size_t(kb) * 1024;
        break;
      }
    std::fclose(f);
  }
  // A container's limit (cgroup v2) less what the group already uses.
  auto read_u64 = [](const char* path, unsigned long long* v) {
    FILE* f = std::fopen(path, "r");
    if (!f) return false;
    const bool ok = std::fscanf(f, "%llu", v) == 1;  // "max" (no limit) does not parse
    std::fclose(f);
    return ok;
  };
  unsigned long long limit = 0, used = 0;
  if (read_u64("/sys/fs/cgroup/memory.max", &limit) && read_u64("/sys/fs/cgroup/memory.current", &used))
    avail = std::min<size_t>(avail, limit > used ? size_t(limit - used) : 0);
  return avail;
}

void release_file_bytes(FileBytes* f) {
  if (f->data) ::munmap(f->data, f->mapped);
  *f = FileBytes{};
}

}  // namespace lx
