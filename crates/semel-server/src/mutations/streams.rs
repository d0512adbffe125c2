//! Reading a queue: subscriptions and pulls, their caps per organisation,
//! and the credentials they check again while they wait.

use super::*;

/// Waits until the caller's credentials no longer pass (checked every
/// [`RECHECK`], in memory); for ever while they do.
async fn until_refused(broker: &Broker, credentials: &Held) {
    loop {
        tokio::time::sleep(RECHECK).await;
        if broker.authorize_parts(&credentials.parts()).is_err() {
            return;
        }
    }
}

/// Waits for the fallback poll, while this broker cannot hear changes
/// queued through other brokers; for ever (until woken) while it can.
async fn fallback_poll(broker: &Broker) {
    if broker
        .mutations_heard
        .load(std::sync::atomic::Ordering::Acquire)
    {
        std::future::pending::<()>().await
    } else {
        tokio::time::sleep(broker.mutation_settings().fallback_poll).await
    }
}

/// The end of a subscription when the broker shuts down.
fn shutting_down() -> ApiError {
    ApiError::retryable(
        Code::Unavailable,
        "SHUTTING_DOWN",
        "the broker is shutting down; subscribe again (through another broker): delivery resumes after your last acknowledgement",
    )
}

/// Where a read starts: after `after`, or after the last acknowledged
/// position; a position not queued yet is refused (the changes up to it
/// would be skipped unseen).
fn start_after(after: u64, state: &QueueState) -> Result<u64, ApiError> {
    if after > state.head {
        return Err(ApiError::new(
            Code::OutOfRange,
            "OUT_OF_RANGE",
            format!(
                "after: position {after} is beyond your queue's last ({}); give 0 to resume after your last acknowledgement",
                state.head
            ),
        ));
    }
    Ok(if after == 0 {
        state.acknowledged
    } else {
        after
    })
}

pub(super) type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::SubscribeResponse, Status>> + Send>>;

/// Which of an organisation's open reads a [`Slot`] counts.
#[derive(Clone, Copy)]
enum Reads {
    Subscriptions,
    Pulls,
}

impl Reads {
    fn counts(self, broker: &Broker) -> &std::sync::Mutex<HashMap<Kbo, usize>> {
        match self {
            Reads::Subscriptions => &broker.subscriptions,
            Reads::Pulls => &broker.pulls,
        }
    }
}

/// One of an organisation's subscriptions (or pulls) on this broker, given
/// back when it ends.
struct Slot {
    broker: Arc<Broker>,
    org: Kbo,
    reads: Reads,
}

impl Slot {
    fn take(broker: &Arc<Broker>, org: Kbo, reads: Reads) -> Option<Slot> {
        let mut open = reads
            .counts(broker)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(org).or_insert(0);
        let most = match reads {
            Reads::Subscriptions => MAX_SUBSCRIPTIONS,
            Reads::Pulls => MAX_PULLS,
        };
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(Slot {
            broker: broker.clone(),
            org,
            reads,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .reads
            .counts(&self.broker)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.org);
            }
        }
    }
}

/// A subscription's (or a waiting pull's) credentials, owned: checked
/// again before each round.
struct Held {
    peer: Option<Arc<crate::tls::PeerIdentity>>,
    token: Option<String>,
    rule: Option<&'static crate::permissions::Rule>,
}

impl Held {
    fn parts(&self) -> Credentials<'_> {
        Credentials {
            peer: self.peer.as_ref(),
            token: self.token.as_deref(),
            rule: self.rule,
        }
    }
}

impl Broker {
    /// How many subscriptions and pulls wait for changes on this broker
    /// (a test waits for its pull to be waiting).
    pub fn waiting_for_changes(&self) -> usize {
        self.mutations_queued.receiver_count()
    }
}

impl MutationService {
    pub(super) async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let mut caller = self.broker.admit(&req).await?;
        // A subscription is bounded by its own cap below, for as long as it
        // is open; it does not hold one of the slots for calls in flight.
        caller.slot = None;
        let credentials = {
            let c = Credentials::of(&req);
            Held {
                peer: c.peer.cloned(),
                token: c.token.map(str::to_owned),
                rule: c.rule,
            }
        };
        let after = req.into_inner().after;
        let broker = self.broker.clone();
        // A few subscriptions per organisation: each reads the queue, and
        // more would only send the same changes again.
        let slot = Slot::take(&broker, caller.org.kbo, Reads::Subscriptions).ok_or_else(|| {
            ApiError::retryable(
                Code::ResourceExhausted,
                "SUBSCRIPTIONS_EXCEEDED",
                format!(
                    "your organisation holds {MAX_SUBSCRIPTIONS} subscriptions on this broker already; close one, or read with PullMutations"
                ),
            )
        })?;
        let state = broker
            .storage()
            .mutations
            .queue_state(&caller.org.kbo)
            .await
            .map_err(ApiError::from)?;
        let mut position = start_after(after, &state)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<proto::SubscribeResponse, Status>>(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut woken = broker.mutations_queued.subscribe();
            let mut closing = broker.closing.subscribe();
            // Sends one item, unless the broker begins to shut down or the
            // consumer went away first.
            macro_rules! send {
                ($item:expr) => {
                    tokio::select! {
                        sent = tx.send($item) => if sent.is_err() { return },
                        _ = closing.changed() => {
                            return;
                        }
                    }
                };
            }
            loop {
                if *closing.borrow_and_update() {
                    return;
                }
                // Checked again before each round, as a batch's items are: a
                // revoked certificate, an expired token or a suspension ends
                // the subscription.
                let caller = match broker.authorize_parts(&credentials.parts()) {
                    Ok(c) => c,
                    Err(denied) => {
                        let e = broker.record_refusal(*denied, None).await;
                        send!(Err(e.into()));
                        return;
                    }
                };
                woken.borrow_and_update();
                let (queued, lost, last) = match broker.next_changes(&caller, position, PAGE).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        send!(Err(e.into()));
                        return;
                    }
                };
                let read_any = last != position;
                if let Some(lost) = lost {
                    let item = proto::subscribe_response::Item::Lost(lost);
                    send!(Ok(proto::SubscribeResponse { item: Some(item) }));
                }
                // Every change of the page is recorded (the entries share
                // syncs), the page marked delivered (so that the consumer may
                // acknowledge what it gets at once), then sent in order.
                let events = match broker.deliver_page(&caller, &queued, position, last).await {
                    Ok(events) => events,
                    Err(e) => {
                        send!(Err(e.into()));
                        return;
                    }
                };
                for e in events {
                    // What the consumer does not acknowledge comes again
                    // when it returns.
                    let item = proto::subscribe_response::Item::Event(e);
                    send!(Ok(proto::SubscribeResponse { item: Some(item) }));
                }
                position = last;
                if read_any {
                    continue;
                }
                // Until a change is queued (through any broker), the
                // broker closes, the fallback poll (while other brokers'
                // changes cannot be heard), or the caller no longer passes
                // (the next round refuses it).
                tokio::select! {
                    _ = woken.changed() => {}
                    _ = closing.changed() => {}
                    _ = fallback_poll(&broker) => {}
                    _ = until_refused(&broker, &credentials) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        // The response ends when the broker begins to shut down, whatever
        // is buffered and however slowly the consumer reads, with a status
        // that says to subscribe again; a drain never waits on it.
        use futures::StreamExt as _;
        let mut until = self.broker.closing.subscribe();
        let mut after_close = self.broker.closing.subscribe();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .take_until(async move {
                let _ = until.wait_for(|closing| *closing).await;
            })
            .chain(
                futures::stream::once(async move { *after_close.borrow_and_update() }).filter_map(
                    |closing| async move { closing.then(|| Err(shutting_down().into())) },
                ),
            );
        Ok(Response::new(Box::pin(stream)))
    }

    pub(super) async fn pull_mutations(
        &self,
        req: Request<proto::PullMutationsRequest>,
    ) -> Result<Response<proto::PullMutationsResponse>, Status> {
        let mut caller = self.broker.admit(&req).await?;
        // The call's slot in flight is held to the end, whichever caller
        // the rounds below check.
        let _in_flight = caller.slot.take();
        let _pull = Slot::take(&self.broker, caller.org.kbo, Reads::Pulls).ok_or_else(|| {
            ApiError::retryable(
                Code::ResourceExhausted,
                "SUBSCRIPTIONS_EXCEEDED",
                format!(
                    "your organisation has {MAX_PULLS} pulls in progress on this broker already; wait for their answers, then pull again"
                ),
            )
        })?;
        let credentials = {
            let c = Credentials::of(&req);
            Held {
                peer: c.peer.cloned(),
                token: c.token.map(str::to_owned),
                rule: c.rule,
            }
        };
        let r = req.into_inner();
        if r.max_events < 0 || r.max_events as usize > MAX_PULL {
            return Err(ApiError::invalid(
                "max_events",
                "INVALID_ARGUMENT",
                format!("max_events must lie between 1 and {MAX_PULL} (0: 100)"),
            )
            .into());
        }
        if !(0..=MAX_WAIT_S).contains(&r.wait_seconds) {
            return Err(ApiError::invalid(
                "wait_seconds",
                "INVALID_ARGUMENT",
                format!("wait_seconds must lie between 0 and {MAX_WAIT_S}"),
            )
            .into());
        }
        let limit = if r.max_events == 0 {
            PAGE
        } else {
            r.max_events as usize
        };
        let broker = &self.broker;
        let store = &broker.storage().mutations;
        let state = store
            .queue_state(&caller.org.kbo)
            .await
            .map_err(ApiError::from)?;
        let mut after = start_after(r.after, &state)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(r.wait_seconds as u64);
        let mut woken = broker.mutations_queued.subscribe();
        let mut closing = broker.closing.subscribe();
        let mut first = true;
        loop {
            // Checked again before each round but the first, as a
            // subscription's are: a pull waits up to 30 seconds, and a
            // certificate revoked, a token expired or an organisation
            // suspended meanwhile must not be sent what comes.
            if !std::mem::take(&mut first) {
                caller = match broker.authorize_parts(&credentials.parts()) {
                    Ok(c) => c,
                    Err(denied) => return Err(broker.record_refusal(*denied, None).await.into()),
                };
            }
            woken.borrow_and_update();
            let closing_now = *closing.borrow_and_update();
            let (queued, lost, last) = broker.next_changes(&caller, after, limit).await?;
            let events = broker.deliver_page(&caller, &queued, after, last).await?;
            // Changes withheld (their authorisation no longer allows them)
            // are behind us: the next round reads after them.
            after = last;
            if !events.is_empty()
                || lost.is_some()
                || closing_now
                || tokio::time::Instant::now() >= deadline
            {
                let acknowledged = store
                    .queue_state(&caller.org.kbo)
                    .await
                    .map_err(ApiError::from)?
                    .acknowledged;
                return Ok(Response::new(proto::PullMutationsResponse {
                    events,
                    lost,
                    acknowledged,
                    last_position: last,
                }));
            }
            tokio::select! {
                _ = woken.changed() => {}
                _ = fallback_poll(broker) => {}
                _ = until_refused(broker, &credentials) => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = closing.changed() => {}
            }
        }
    }
}
