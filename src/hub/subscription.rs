//! What one subscriber asked for and may receive.

use super::{Event, Selector};

/// A subscriber's topic selectors and, when it holds a token, its subscribe claim.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The `topic` selectors of the request.
    pub selectors: Vec<Selector>,
    /// The token's `mercure.subscribe` selectors; `None` for an anonymous subscriber.
    pub claims: Option<Vec<Selector>>,
}

impl Subscription {
    /// Whether this subscriber receives `event`: one of its selectors matches one of the
    /// event's topics and, for a private update, one of its claims does too.
    pub fn wants(&self, event: &Event) -> bool {
        self.permits(&event.topics, event.private)
    }

    /// [`Subscription::wants`] for an update known by its topics and privacy (a
    /// snapshot's records).
    pub fn permits(&self, topics: &[String], private: bool) -> bool {
        let asked = topics
            .iter()
            .any(|t| self.selectors.iter().any(|s| s.selects(t)));
        if !asked {
            return false;
        }
        if !private {
            return true;
        }
        match &self.claims {
            None => false,
            Some(claims) => topics.iter().any(|t| claims.iter().any(|c| c.matches(t))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::EventDraft;

    fn event(topics: &[&str], private: bool) -> Event {
        Event::new(
            1,
            EventDraft::new(topics.iter().map(|t| t.to_string()).collect(), "d").private(private),
        )
    }

    fn sub(selectors: &[&str], claims: Option<&[&str]>) -> Subscription {
        let p = |v: &[&str]| v.iter().map(|s| Selector::parse(s).unwrap()).collect();
        Subscription {
            selectors: p(selectors),
            claims: claims.map(p),
        }
    }

    #[test]
    fn private_updates_need_a_matching_claim() {
        let private = event(&["audits/a"], true);
        assert!(!sub(&["*"], None).wants(&private));
        assert!(!sub(&["*"], Some(&["audits/b"])).wants(&private));
        assert!(sub(&["audits/{t}"], Some(&["audits/{t}"])).wants(&private));
        let public = event(&["audits/a"], false);
        assert!(sub(&["audits/a"], None).wants(&public));
        assert!(!sub(&["audits/b"], None).wants(&public));
    }
}
