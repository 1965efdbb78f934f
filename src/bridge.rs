//! The ports one request may touch (store, variables, outbound HTTP, clock) and its work
//! deadline, passed by value to every layer below the router.

use crate::fault::Fault;
use crate::gong::client::GongClient;
use crate::ports::{Clock, Config, Kv, Outbound};
use crate::settings;
use crate::store::Store;

/// Everything a handler may touch.
#[derive(Clone, Copy)]
pub struct Bridge<'a> {
    pub kv: &'a dyn Kv,
    pub config: &'a dyn Config,
    pub outbound: &'a dyn Outbound,
    pub clock: &'a dyn Clock,
    /// When set, no Gong call starts after this instant and none waits past it: the bound on
    /// work after the answer and on `POST /flush` (`work_budget_ms`).
    pub deadline: Option<time::OffsetDateTime>,
    /// This invocation's counters, saved once at its end (`tally::Tally::save`).
    pub tally: &'a crate::tally::Tally,
}

impl<'a> Bridge<'a> {
    /// The same bridge, bound to finish its Gong calls within `work_budget_ms` from `started`.
    pub fn with_budget(self, started: time::OffsetDateTime) -> Bridge<'a> {
        Bridge {
            deadline: Some(started + settings::work_budget(self.config)),
            ..self
        }
    }

    pub fn store(&self) -> Store<'a> {
        Store::new(self.kv)
    }

    /// Now, as RFC 3339 in UTC without fractional seconds.
    pub fn now(&self) -> String {
        crate::validation::format_gong_datetime(self.clock.now())
    }

    /// Idempotency keys over this bridge's store, with the configured expiry and settle time.
    pub fn idempotency(&self) -> crate::idempotency::Idempotency<'a> {
        crate::idempotency::Idempotency {
            kv: self.kv,
            clock: self.clock,
            ttl: settings::idempotency_ttl(self.config),
            settle: settings::idempotency_settle(self.config),
        }
    }

    pub fn gong(&self) -> Result<GongClient, Fault> {
        settings::gong_client(self.config)
    }

    /// The integrationId in use: the `integration_id` variable, else the one kept by
    /// `PUT /integration`; with neither, the caller must register first.
    pub fn integration_id(&self) -> Result<i64, Fault> {
        if let Some(id) = settings::integration_id_variable(self.config)? {
            return Ok(id);
        }
        match self.store().integration()? {
            Some(kept) => Ok(kept.integration_id),
            None => Err(Fault::NoIntegration),
        }
    }
}
