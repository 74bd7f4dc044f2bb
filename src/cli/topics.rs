//! `stampede topics`: create, delete and check the contract's topics and
//! their schema files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::config::Settings;
use crate::contracts;
use crate::kafka::admin::{create_topics, delete_topics, TopicOutcome};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every request, result, stats and DLQ topic (existing ones are left alone).
    Create,
    /// Delete every contract topic under the configured prefix, with everything on it.
    Delete {
        /// Confirm: the topics and every message on them are gone for good.
        #[arg(long)]
        yes: bool,
    },
    /// Write or check the JSON Schemas and AsyncAPI document generated from the message types.
    Schemas {
        /// Folder holding the contract files.
        #[arg(long, default_value = "topics")]
        dir: PathBuf,
        /// Fail when the files differ from the types instead of writing them.
        #[arg(long)]
        check: bool,
    },
}

pub async fn run(command: TopicsCommand, settings: &Settings) -> anyhow::Result<ExitCode> {
    match command {
        TopicsCommand::Create => {
            for outcome in create_topics(&settings.kafka).await? {
                match outcome {
                    TopicOutcome::Created(t) => {
                        println!("created {t} ({} partitions)", settings.kafka.partitions)
                    }
                    TopicOutcome::Existed(t) => println!("exists  {t}"),
                }
            }
        }
        TopicsCommand::Delete { yes } => {
            if !yes {
                bail!(
                    "this deletes every topic under the prefix {:?} and all their messages; add --yes to confirm",
                    settings.kafka.topic_prefix
                );
            }
            for topic in delete_topics(&settings.kafka).await? {
                println!("deleted {topic}");
            }
        }
        TopicsCommand::Schemas { dir, check } => {
            if check {
                let drift = contracts::drift(&dir);
                if !drift.is_empty() {
                    bail!("contract files out of date in {}: {drift:?}; run `stampede topics schemas --dir {}`", dir.display(), dir.display());
                }
                println!(
                    "contract files in {} match the message types",
                    dir.display()
                );
            } else {
                for name in contracts::write(&dir)? {
                    println!("wrote {}", dir.join(name).display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
