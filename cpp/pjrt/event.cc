#include "pjrt/event.h"

namespace cascade {

Event::~Event() {
  if (!event_) return;
  // Destroying an unfired event is allowed, but await first so nothing still writes to memory we free.
  PJRT_Event_Await_Args await{};
  await.struct_size = PJRT_Event_Await_Args_STRUCT_SIZE;
  await.event = event_;
  if (PJRT_Error* e = api_->raw()->PJRT_Event_Await(&await)) {
    PJRT_Error_Destroy_Args d{};
    d.struct_size = PJRT_Error_Destroy_Args_STRUCT_SIZE;
    d.error = e;
    api_->raw()->PJRT_Error_Destroy(&d);
  }
  PJRT_Event_Destroy_Args args{};
  args.struct_size = PJRT_Event_Destroy_Args_STRUCT_SIZE;
  args.event = event_;
  api_->raw()->PJRT_Event_Destroy(&args);
}

void Event::Await(const char* what) {
  if (!event_) return;
  PJRT_Event_Await_Args await{};
  await.struct_size = PJRT_Event_Await_Args_STRUCT_SIZE;
  await.event = event_;
  PJRT_Error* error = CASCADE_PJRT_FN(*api_, Event_Await)(&await);
  PJRT_Event_Destroy_Args destroy{};
  destroy.struct_size = PJRT_Event_Destroy_Args_STRUCT_SIZE;
  destroy.event = event_;
  api_->raw()->PJRT_Event_Destroy(&destroy);
  event_ = nullptr;
  api_->Check(error, what);
}

}  // namespace cascade
