//! Create, update and delete the CloudFormation stack of `cai aws template`.
//!
//! [`deploy`] creates the stack when it does not exist, updates it when it does (an unchanged
//! template and code is not an error), replaces a stack whose first creation failed, waits for
//! the result while reporting each resource event, and on failure says which resources failed
//! and why (from the stack's events), rather than only the final status.

use std::collections::HashSet;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_cloudformation as cfn;
use cfn::types::{Capability, Parameter, Stack};

use crate::{aws_err, Error, Result};

/// CloudFormation's limit on a template passed inline (`TemplateBody`).
pub const MAX_TEMPLATE_BODY: usize = 51_200;

/// One stack event, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEvent {
    /// Logical id of the resource (or the stack's name).
    pub resource: String,
    /// Its new status (`CREATE_IN_PROGRESS`, `CREATE_FAILED`, …).
    pub status: String,
    /// Why, when CloudFormation says.
    pub reason: Option<String>,
}

/// A stack that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// Stack name.
    pub stack: String,
    /// `created`, `updated` or `unchanged`.
    pub action: &'static str,
    /// The workflow's state machine.
    pub state_machine_arn: String,
    /// The results location the stack may write (`s3://bucket/prefix`).
    pub results: String,
}

fn is_missing(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("does not exist")
}

async fn describe(client: &cfn::Client, stack: &str) -> Result<Option<Stack>> {
    match client.describe_stacks().stack_name(stack).send().await {
        Ok(out) => Ok(out.stacks.and_then(|s| s.into_iter().next())),
        Err(e) => {
            let e = aws_err("DescribeStacks", e);
            if is_missing(&e) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

fn status_of(s: &Stack) -> String {
    s.stack_status
        .as_ref()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default()
}

/// The events of one stack operation: which were reported, which failed.
#[derive(Default)]
struct EventLog {
    seen: HashSet<String>,
    failures: Vec<StackEvent>,
}

impl EventLog {
    /// Report the events not seen yet (oldest first) and remember them; keep the failures.
    async fn poll(
        &mut self,
        client: &cfn::Client,
        stack: &str,
        on_event: &mut impl FnMut(&StackEvent),
    ) {
        let Ok(out) = client
            .describe_stack_events()
            .stack_name(stack)
            .send()
            .await
        else {
            return;
        };
        for e in out.stack_events.unwrap_or_default().into_iter().rev() {
            if !self.seen.insert(e.event_id.clone().unwrap_or_default()) {
                continue;
            }
            let ev = StackEvent {
                resource: e.logical_resource_id.unwrap_or_default(),
                status: e
                    .resource_status
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                reason: e.resource_status_reason,
            };
            on_event(&ev);
            if ev.status.ends_with("_FAILED") {
                self.failures.push(ev);
            }
        }
    }

    /// Mark the events so far as seen without reporting them (an earlier operation's).
    async fn skip_past(&mut self, client: &cfn::Client, stack: &str) {
        self.poll(client, stack, &mut |_| {}).await;
        self.failures.clear();
    }

    /// Poll until the stack leaves `*_IN_PROGRESS`; return its last description (`None`
    /// when it is gone, as after a delete).
    async fn wait(
        &mut self,
        client: &cfn::Client,
        stack: &str,
        poll: Duration,
        on_event: &mut impl FnMut(&StackEvent),
    ) -> Result<Option<Stack>> {
        loop {
            self.poll(client, stack, on_event).await;
            match describe(client, stack).await? {
                None => return Ok(None),
                Some(s) if status_of(&s).ends_with("_IN_PROGRESS") => {}
                Some(s) if status_of(&s) == "DELETE_COMPLETE" => return Ok(None),
                Some(s) => return Ok(Some(s)),
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The error for a stack that ended in `status`, with the failed resources' reasons.
    fn failed(&self, stack: &str, status: String) -> Error {
        let reasons: Vec<String> = self
            .failures
            .iter()
            .filter(|f| f.resource != stack)
            .map(|f| {
                format!(
                    "{} {}: {}",
                    f.resource,
                    f.status,
                    f.reason.as_deref().unwrap_or("no reason given")
                )
            })
            .collect();
        Error::Stack {
            stack: stack.to_string(),
            status,
            reasons: if reasons.is_empty() {
                "see the stack's events in the CloudFormation console".into()
            } else {
                reasons.join("; ")
            },
        }
    }
}

fn output(s: &Stack, key: &str) -> Option<String> {
    s.outputs
        .as_ref()?
        .iter()
        .find(|o| o.output_key.as_deref() == Some(key))?
        .output_value
        .clone()
}

/// Create or update the stack `stack` from `template` (the CloudFormation template, as
/// `cai_engine::aws::template` generates it), its functions' code at
/// `s3://code_bucket/code_key`; wait for it, calling `on_event` for each resource event;
/// return its outputs.
pub async fn deploy(
    sdk: &SdkConfig,
    stack: &str,
    template: &serde_json::Value,
    code_bucket: &str,
    code_key: &str,
    poll: Duration,
    mut on_event: impl FnMut(&StackEvent),
) -> Result<Deployed> {
    let client = cfn::Client::new(sdk);
    let body = serde_json::to_string(template).map_err(|source| Error::Encode {
        what: "the template",
        source,
    })?;
    if body.len() > MAX_TEMPLATE_BODY {
        return Err(Error::TemplateTooLarge {
            bytes: body.len(),
            max: MAX_TEMPLATE_BODY,
        });
    }
    let params = vec![
        Parameter::builder()
            .parameter_key("CodeBucket")
            .parameter_value(code_bucket)
            .build(),
        Parameter::builder()
            .parameter_key("CodeKey")
            .parameter_value(code_key)
            .build(),
    ];
    let caps = [Capability::CapabilityIam, Capability::CapabilityNamedIam];
    let mut log = EventLog::default();

    let mut existing = describe(&client, stack).await?;
    if let Some(s) = &existing {
        let status = status_of(s);
        if status.ends_with("_IN_PROGRESS") {
            return Err(Error::StackBusy {
                stack: stack.to_string(),
                status,
            });
        }
        if status == "ROLLBACK_COMPLETE" || status == "ROLLBACK_FAILED" {
            // A stack whose creation failed cannot be updated: delete it and create anew.
            on_event(&StackEvent {
                resource: stack.to_string(),
                status: format!("{status}: deleting before creating again"),
                reason: None,
            });
            delete_stack(sdk, stack, poll, &mut on_event).await?;
            existing = None;
        } else {
            // Events of earlier deployments are not news.
            log.skip_past(&client, stack).await;
        }
    }

    let action = match existing {
        None => {
            client
                .create_stack()
                .stack_name(stack)
                .template_body(&body)
                .set_parameters(Some(params))
                .set_capabilities(Some(caps.to_vec()))
                .send()
                .await
                .map_err(|e| aws_err("CreateStack", e))?;
            "created"
        }
        Some(_) => {
            let sent = client
                .update_stack()
                .stack_name(stack)
                .template_body(&body)
                .set_parameters(Some(params))
                .set_capabilities(Some(caps.to_vec()))
                .send()
                .await;
            match sent {
                Ok(_) => "updated",
                Err(e) => {
                    let e = aws_err("UpdateStack", e);
                    if e.to_string().contains("No updates are to be performed") {
                        "unchanged"
                    } else {
                        return Err(e);
                    }
                }
            }
        }
    };

    let done = log
        .wait(&client, stack, poll, &mut on_event)
        .await?
        .ok_or_else(|| log.failed(stack, "DELETED".into()))?;
    let status = status_of(&done);
    if !matches!(status.as_str(), "CREATE_COMPLETE" | "UPDATE_COMPLETE") {
        return Err(log.failed(stack, status));
    }
    let state_machine_arn =
        output(&done, "StateMachineArn").ok_or_else(|| Error::MissingOutput {
            stack: stack.to_string(),
            output: "StateMachineArn",
        })?;
    Ok(Deployed {
        stack: stack.to_string(),
        action,
        state_machine_arn,
        results: output(&done, "Results").unwrap_or_default(),
    })
}

/// Delete the stack (its functions, roles, log groups and state machine; never the data or
/// results buckets) and wait until it is gone. A stack that does not exist is not an error.
pub async fn delete_stack(
    sdk: &SdkConfig,
    stack: &str,
    poll: Duration,
    mut on_event: impl FnMut(&StackEvent),
) -> Result<bool> {
    let client = cfn::Client::new(sdk);
    if describe(&client, stack).await?.is_none() {
        return Ok(false);
    }
    let mut log = EventLog::default();
    log.skip_past(&client, stack).await;
    client
        .delete_stack()
        .stack_name(stack)
        .send()
        .await
        .map_err(|e| aws_err("DeleteStack", e))?;
    match log.wait(&client, stack, poll, &mut on_event).await? {
        None => Ok(true),
        Some(s) => Err(log.failed(stack, status_of(&s))),
    }
}
