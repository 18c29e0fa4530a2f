//! A worker with a durable cursor: it processes messages, commits after each, and on restart
//! resumes right after the last committed one.
//!
//! Needs Redis: `cargo run -p herald --example durable_worker -- redis://127.0.0.1:6379`.
//! Publish with `herald publish jobs "some work"` and run the worker twice.

use std::time::Duration;

use futures::StreamExt;
use herald::{Event, Herald, Start};

#[tokio::main]
async fn main() -> Result<(), herald::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let herald = Herald::builder().redis(url).connect().await?;
    let mut sub = herald
        .subscribe(["jobs"])
        .from(Start::Earliest)
        .durable("worker")
        .await?;
    println!("waiting for jobs (stops after 5 s without one)");
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        match event? {
            Event::Message(job) => {
                println!(
                    "job #{}: {}",
                    job.position.offset,
                    String::from_utf8_lossy(&job.payload)
                );
                sub.commit(&job).await?;
            }
            Event::Gap { from, to, .. } => {
                println!("jobs {from}..={to} were trimmed before we read them")
            }
            Event::Reset { .. } => println!("the log was lost; starting over in a new epoch"),
            other => println!("{other:?}"),
        }
    }
    Ok(())
}
