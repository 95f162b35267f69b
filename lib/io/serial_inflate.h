// While a SerialInflate exists, direct reads (RawDataset) on the thread that made it decode
// their compressed chunks on that thread, not on a pool of their own: for callers that
// already read on several threads.
#pragma once

namespace sctrain::io {

struct SerialInflate {
  SerialInflate();
  ~SerialInflate();
  SerialInflate(const SerialInflate&) = delete;
  SerialInflate& operator=(const SerialInflate&) = delete;
};

}  // namespace sctrain::io
