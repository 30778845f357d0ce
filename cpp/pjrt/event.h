// Owner of one PJRT_Event: Await() blocks until it fires and throws its error; the destructor
// destroys it (every event is awaited or at least destroyed, never leaked).
#pragma once

#include <memory>

#include "pjrt/api.h"

namespace cascade {

class Event {
 public:
  Event(std::shared_ptr<const Api> api, PJRT_Event* event) : api_(std::move(api)), event_(event) {}
  Event(Event&& o) noexcept : api_(std::move(o.api_)), event_(o.event_) { o.event_ = nullptr; }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();

  // Waits for the event and throws PjrtError if it carries an error. Safe to call once.
  void Await(const char* what);

 private:
  std::shared_ptr<const Api> api_;
  PJRT_Event* event_;
};

}  // namespace cascade
