//! Progress bars (indicatif) for long writes.

use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use quiver::Progress;

/// Writes of fewer rows than this show no bar.
const MIN_ROWS: u64 = 50_000;

/// A bar on stderr per view when `show`, else nothing.
pub fn bar(show: bool) -> Arc<dyn Progress> {
    if show {
        Arc::new(Bar(Mutex::new(None)))
    } else {
        Arc::new(quiver::NoProgress)
    }
}

struct Bar(Mutex<Option<ProgressBar>>);

impl Progress for Bar {
    fn start(&self, view: &str, total: u64) {
        let bar = if total > MIN_ROWS {
            let bar = ProgressBar::new(total).with_message(view.to_string());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>24} [{bar:40}] {pos}/{len} rows {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        *self.0.lock().expect("not poisoned") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &*self.0.lock().expect("not poisoned") {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.0.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }
}
