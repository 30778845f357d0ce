#include "pjrt/event.h"

namespace cascade {

Event::~Event() {
  if (!event_) return;
  // Destroying an unfired event is allowed, but await first so nothing still writes to memory we free.
  auto await = CASCADE_PJRT_STRUCT(PJRT_Event_Await_Args);
  await.event = event_;
  if (PJRT_Error* e = api_->raw()->PJRT_Event_Await(&await)) {
    auto d = CASCADE_PJRT_STRUCT(PJRT_Error_Destroy_Args);
    d.error = e;
    api_->raw()->PJRT_Error_Destroy(&d);
  }
  auto args = CASCADE_PJRT_STRUCT(PJRT_Event_Destroy_Args);
  args.event = event_;
  api_->raw()->PJRT_Event_Destroy(&args);
}

void Event::Await(const char* what) {
  if (!event_) return;
  auto await = CASCADE_PJRT_STRUCT(PJRT_Event_Await_Args);
  await.event = event_;
  PJRT_Error* error = CASCADE_PJRT_FN(*api_, Event_Await)(&await);
  auto destroy = CASCADE_PJRT_STRUCT(PJRT_Event_Destroy_Args);
  destroy.event = event_;
  api_->raw()->PJRT_Event_Destroy(&destroy);
  event_ = nullptr;
  api_->Check(error, what);
}

}  // namespace cascade
