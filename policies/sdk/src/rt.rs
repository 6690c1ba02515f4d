//! The runtime a `no_std` policy needs on wasm32: an allocator and a panic
//! handler. Off wasm32 the crate links `std`, which provides both.

/// See [`crate::alloc_arena`]: a bump allocator, since each instance lives
/// for one call.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: crate::alloc_arena::BumpAllocator = crate::alloc_arena::BumpAllocator::new();

/// A panic becomes a trap, which the host counts as a fault of the policy and
/// answers with its built-in safe order. The message goes to the gateway's
/// log first, because a bare trap does not say what went wrong.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::sync::atomic::{AtomicBool, Ordering};

    // Formatting allocates; if that panics too (out of memory), trap at once
    // instead of recursing.
    static PANICKING: AtomicBool = AtomicBool::new(false);
    if !PANICKING.swap(true, Ordering::Relaxed) {
        crate::log::error(&alloc::format!("policy {info}"));
    }
    core::arch::wasm32::unreachable()
}
