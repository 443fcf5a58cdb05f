//! Instructions per request, counted by valgrind's callgrind: a measure that
//! does not move with the load on the machine, unlike the wall-clock benches.
//!
//! `instructions VARIANT N` sends N requests through one variant of
//! `hot_path` (built the same way) on a current-thread runtime. Run it twice
//! under callgrind with two counts; the difference of the totals divided by
//! the difference of the counts is the cost of one request, set-up excluded.
//! `benches/instructions.sh` does exactly that for every variant and prints
//! the table for BENCHMARKS.md.
//!
//! Without arguments (as `cargo bench` runs it) it does nothing.

#[path = "hot_path.rs"]
#[allow(dead_code)]
mod hot_path;

use std::fmt::Debug;

use tokio::runtime::Runtime;
use tower::Service;

use hot_path::{for_each_variant, send_prebuilt, Req, Resp, Variants};

struct Only<'r> {
    name: String,
    count: u64,
    rt: &'r Runtime,
    ran: bool,
}

impl Variants for Only<'_> {
    fn variant<S>(&mut self, name: &'static str, mut service: S)
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Error: Debug,
        S::Future: Send + 'static,
    {
        if name == self.name {
            self.rt.block_on(send_prebuilt(&mut service, self.count));
            self.ran = true;
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let (Some(name), Some(count)) = (args.next(), args.next()) else {
        return;
    };
    let count = count.parse().expect("a request count");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut only = Only {
        name,
        count,
        rt: &rt,
        ran: false,
    };
    for_each_variant(&rt, &mut only);
    assert!(only.ran, "no variant named {}", only.name);
}
