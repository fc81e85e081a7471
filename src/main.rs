fn main() {
    // In the live image the kernel starts this binary as /init (PID 1): it becomes the
    // supervisor, which starts a second copy of itself as the worker.
    if ferry::init::pid1::is_init() {
        ferry::init::pid1::supervise();
    }
    if ferry::init::pid1::is_worker() {
        std::process::exit(ferry::init::worker::run());
    }
    std::process::exit(ferry::cli::run());
}
