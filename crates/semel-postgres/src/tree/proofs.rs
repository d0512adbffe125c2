//! Reading the integrated tree: its root at a size, the latest checkpoint, and
//! inclusion and consistency proofs (RFC 6962), each read in one query.

use semel_core::Hash;
use semel_core::merkle;

use super::{Asked, Nodes, peaks, perfect_nodes};
use crate::{PgAudit, PgError};

impl PgAudit {
    /// The root of the tree of the first `size` entries (integrated).
    pub async fn root(&self, size: u64) -> Result<Hash, PgError> {
        self.integrated(size).await?;
        let parts = peaks(size);
        Self::nodes(&self.conn.client, &parts)
            .await?
            .combine(&parts)
    }

    /// The latest signed checkpoint's note of at most `size` entries (the
    /// newest tree size confirmed replicated), if any.
    pub async fn latest_checkpoint(&self, size: u64) -> Result<Option<String>, PgError> {
        Ok(self
            .conn
            .client
            .query_opt(
                "SELECT note FROM audit_checkpoints WHERE size <= $1 ORDER BY size DESC LIMIT 1",
                &[&(size.min(i64::MAX as u64) as i64)],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Checks a proof's tree size against what is integrated.
    async fn integrated(&self, size: u64) -> Result<(), PgError> {
        let head = self.tree_head().await?;
        if size > head.size {
            return Err(PgError::NotIntegrated {
                asked: size,
                integrated: head.size,
            });
        }
        Ok(())
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries
    /// (RFC 6962), read in one query.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, PgError> {
        if index >= size {
            return Err(PgError::OutOfRange(format!(
                "entry {index} is not in a tree of {size}"
            )));
        }
        self.integrated(size).await?;
        let asked = Asked::default();
        let Ok(_) = merkle::inclusion_proof(&asked, index, size);
        let nodes = self.nodes_for(asked).await?;
        merkle::inclusion_proof(&nodes, index, size)
    }

    /// The consistency proof from the tree of `old` entries to the tree of
    /// `new` (RFC 6962), read in one query.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, PgError> {
        if old == 0 || old > new {
            return Err(PgError::OutOfRange(format!(
                "no consistency proof from {old} to {new} entries: the first size must be between 1 and the second"
            )));
        }
        self.integrated(new).await?;
        let asked = Asked::default();
        let Ok(_) = merkle::consistency_proof(&asked, old, new);
        let nodes = self.nodes_for(asked).await?;
        merkle::consistency_proof(&nodes, old, new)
    }

    async fn nodes_for(&self, asked: Asked) -> Result<Nodes, PgError> {
        let mut wanted = Vec::new();
        for (start, end) in asked.0.into_inner() {
            perfect_nodes(start, end, &mut wanted);
        }
        Self::nodes(&self.conn.client, &wanted).await
    }
}
