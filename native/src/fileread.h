// Whole files read into fresh anonymous memory, on two threads for large ones: adapter files (the addon's
// readFile) and, on the CPU backend, model weights (there in transparent huge pages). No Node here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"

namespace lx {

struct FileBytes {
  uint8_t* data = nullptr;  // null for an empty file; else release_file_bytes() frees it
  size_t mapped = 0;        // bytes of memory behind data
  size_t size = 0;          // bytes read: the file's size, or fewer if it shrank while being read
};

// Reads the file at `path` whole. `huge_pages` asks the kernel for 2 MiB pages (memory that every decode step
// streams through: with 4 KiB pages the page walks cost ~10% of its read bandwidth). Errors name the path and
// the OS error; *out is then empty.
Status read_whole_file(const std::string& path, bool huge_pages, FileBytes* out);
void release_file_bytes(FileBytes* f);

// Memory the kernel could give this process now without swapping (MemAvailable: free plus reclaimable page
// cache), capped by this process's cgroup limit when there is one; 0 when unknown.
size_t available_memory_bytes();

}  // namespace lx
