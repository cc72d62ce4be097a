//! Conversations: one-to-one and named groups, their members, and membership changes.

use super::outbox::MemberChange;
use super::*;

/// A conversation as `group list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conversation {
    /// MLS group id, hex.
    pub id: String,
    /// Group name; `None` for one-to-one conversations and for groups whose name has not
    /// arrived yet.
    pub name: Option<String>,
    /// The other person of a one-to-one conversation.
    pub peer: Option<String>,
    /// Number of member devices.
    pub devices: usize,
    /// Current MLS epoch.
    pub epoch: u64,
    /// False once this device was removed.
    pub active: bool,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Username.
    pub user: String,
    /// Device ids in the group.
    pub devices: Vec<String>,
}

impl Client {
    /// Adds `add` and removes `remove` (users, with all their devices) in one commit,
    /// retrying on concurrent commits. Returns the events it caused.
    pub(super) async fn change_members(
        &self,
        gid: &GroupId,
        add: &[Username],
        remove: &[Username],
    ) -> Result<Vec<String>, ClientError> {
        for attempt in 0..MAX_ATTEMPTS {
            // Callers sync first; a retry must first process the commit that won the race.
            if attempt > 0 {
                self.pull().await?;
            }
            let members = self.tx(|| self.with_active_group(gid, |_, g| Ok(group::members(g)?)))?;
            let is_member = |u: &Username| members.iter().any(|m| &m.addr.user == u);
            let to_add: Vec<&Username> = add.iter().filter(|u| !is_member(u)).collect();
            let to_remove: Vec<DeviceAddr> = members
                .iter()
                .filter(|m| remove.contains(&m.addr.user))
                .map(|m| m.addr.clone())
                .collect();
            if to_add.is_empty() && to_remove.is_empty() {
                return Ok(Vec::new());
            }
            let mut key_packages = Vec::new();
            for user in &to_add {
                let list = self.fetch_device_list(user).await?;
                let token = self.token().await?;
                let claimed = self
                    .api
                    .claim(&token, user)
                    .await
                    .map_err(|e| match e.code() {
                        Some(ErrorCode::UnknownUser) => {
                            ClientError::Usage(format!("no such user: {user}"))
                        }
                        _ => e,
                    })?;
                for c in claimed.key_packages {
                    let addr = DeviceAddr {
                        user: (*user).clone(),
                        device: c.device,
                    };
                    let entry = list.device(c.device).ok_or_else(|| {
                        ClientError::Security(format!("the server offered device {addr}, which is not in {user}'s signed device list"))
                    })?;
                    let kp = group::verify_key_package(
                        &self.provider(),
                        c.key_package.as_slice(),
                        &addr,
                        entry.signature_key.as_slice(),
                        self.suite,
                    )?;
                    key_packages.push((addr, kp));
                }
            }
            let sent_at = now();
            let req = self.tx(|| {
                let kps: Vec<_> = key_packages.iter().map(|(_, kp)| kp.clone()).collect();
                let (recipients, out) = self.with_active_group(gid, |p, g| {
                    let recipients = self.others(g)?;
                    let out = if kps.is_empty() {
                        group::remove(p, &self.device, g, &to_remove, sent_at)?
                    } else {
                        group::add(p, &self.device, g, &kps, sent_at)?
                    };
                    Ok((recipients, out))
                })?;
                let new_devices: Vec<DeviceAddr> =
                    key_packages.iter().map(|(a, _)| a.clone()).collect();
                let mut roster: Vec<DeviceAddr> = members
                    .iter()
                    .map(|m| m.addr.clone())
                    .filter(|a| !to_remove.contains(a))
                    .collect();
                roster.extend(new_devices.iter().cloned());
                let req = SendRequest {
                    client_id: random_client_id(),
                    message: out.commit.into(),
                    recipients,
                    roster: Some(roster),
                    welcome: out.welcome.map(|w| WelcomeOut {
                        message: w.into(),
                        recipients: new_devices,
                    }),
                };
                let change = MemberChange {
                    add: add.to_vec(),
                    remove: remove.to_vec(),
                };
                self.put_outbox(gid, &req, &change, sent_at)?;
                Ok(req)
            })?;
            match self.post(gid, &req).await {
                Ok(resp) => {
                    let mut events = self.tx(|| self.finish_commit(gid, &req.client_id, &resp))?;
                    if !to_add.is_empty() {
                        self.send_group_info(gid).await?;
                    }
                    if !remove.is_empty() && to_remove.is_empty() {
                        events.push("nobody to remove".into());
                    }
                    return Ok(events);
                }
                // The server may have taken it: the outbox keeps it, the next sync replays it.
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    self.abandon_commit(gid, &req.client_id)?;
                    if e.code() != Some(ErrorCode::EpochConflict) {
                        return Err(e);
                    }
                }
            }
        }
        Err(kept_changing())
    }

    /// Sends the conversation's description (its name, or none for a one-to-one
    /// conversation), as after every commit that adds members.
    pub(super) async fn send_group_info(&self, gid: &GroupId) -> Result<(), ClientError> {
        let name: Option<String> = self.conn.query_row(
            "SELECT name FROM conversations WHERE group_id = ?1",
            [gid.as_bytes()],
            |r| r.get(0),
        )?;
        self.send_content(gid, &Content::GroupInfo { name }, now())
            .await
            .map(drop)
    }

    pub(super) fn create_local_group(
        &self,
        name: Option<&str>,
        peer: Option<&Username>,
    ) -> Result<GroupId, ClientError> {
        self.tx(|| {
            let g = group::create(&self.provider(), &self.device, self.suite)?;
            let gid = GroupId::from_bytes(g.group_id().as_slice())?;
            self.conn.execute(
                "INSERT INTO conversations (group_id, name, peer, announced, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
                params![gid.as_bytes(), name, peer.map(|p| p.as_str()), now() as i64],
            )?;
            Ok(gid)
        })
    }

    pub(super) fn direct_conversation(
        &self,
        peer: &Username,
    ) -> Result<Option<GroupId>, ClientError> {
        let gid: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT group_id FROM conversations WHERE peer = ?1 AND name IS NULL AND active = 1
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [peer.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        gid.map(|g| GroupId::from_bytes(&g).map_err(|_| ClientError::damaged("group id")))
            .transpose()
    }

    pub(super) fn group_by_name(&self, name: &str) -> Result<GroupId, ClientError> {
        let mut stmt = self
            .conn
            .prepare("SELECT group_id FROM conversations WHERE name = ?1 AND active = 1")?;
        let ids: Vec<Vec<u8>> = stmt
            .query_map([name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match ids.as_slice() {
            [one] => GroupId::from_bytes(one).map_err(|_| ClientError::damaged("group id")),
            [] => {
                let removed = self
                    .conn
                    .query_row(
                        "SELECT 1 FROM conversations WHERE name = ?1 AND active = 0",
                        [name],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                Err(ClientError::Usage(if removed {
                    format!("you were removed from the group {name:?}")
                } else {
                    format!("no group named {name:?}")
                }))
            }
            _ => Err(ClientError::Usage(format!(
                "several groups are named {name:?}; rename one first"
            ))),
        }
    }

    pub(super) fn text_content(text: &str) -> Result<Content, ClientError> {
        Content::Text {
            body: text.to_owned(),
        }
        .check()
        .map_err(|e| ClientError::Usage(e.to_string()))
    }

    /// Sends `text` to `user` in your one-to-one conversation, starting it if needed. Refuses
    /// if that conversation holds anyone but the two of you.
    pub async fn send_text(&self, user: &str, text: &str) -> Result<SendResponse, ClientError> {
        let peer = Username::parse(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if peer == self.me().user {
            return Err(ClientError::Usage(
                "you cannot start a conversation with yourself".into(),
            ));
        }
        let content = Self::text_content(text)?;
        let sent = async {
            self.exchange().await?;
            let gid = match self.direct_conversation(&peer)? {
                Some(g) => g,
                None => {
                    self.fetch_device_list(&peer).await?;
                    self.create_local_group(None, Some(&peer))?
                }
            };
            let users: BTreeSet<Username> = self.tx(|| {
                self.with_active_group(&gid, |_, g| {
                    Ok(group::members(g)?
                        .into_iter()
                        .map(|m| m.addr.user)
                        .collect())
                })
            })?;
            if let Some(other) = users.iter().find(|u| **u != peer && **u != self.me().user) {
                return Err(ClientError::Security(format!(
                    "your one-to-one conversation with {peer} now includes {other}; not sending"
                )));
            }
            // Also completes a conversation whose first add failed (network, refused device).
            if !users.contains(&peer) {
                self.change_members(&gid, std::slice::from_ref(&peer), &[])
                    .await?;
            }
            self.send_content(&gid, &content, now()).await
        }
        .await;
        self.recorded(sent)
    }

    /// Sends `text` to the group named `name`.
    pub async fn send_group_text(
        &self,
        name: &str,
        text: &str,
    ) -> Result<SendResponse, ClientError> {
        let content = Self::text_content(text)?;
        let sent = async {
            self.exchange().await?;
            let gid = self.group_by_name(name)?;
            self.send_content(&gid, &content, now()).await
        }
        .await;
        self.recorded(sent)
    }

    pub(super) fn parse_users(users: &[String]) -> Result<Vec<Username>, ClientError> {
        users
            .iter()
            .map(|u| Username::parse(u).map_err(|e| ClientError::Usage(format!("{u:?}: {e}"))))
            .collect()
    }

    /// Creates a group named `name` with `members`.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<Vec<String>, ClientError> {
        Content::GroupInfo {
            name: Some(name.to_owned()),
        }
        .check()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
        let members = Self::parse_users(members)?;
        let created = async {
            self.exchange().await?;
            if self.group_by_name(name).is_ok() {
                return Err(ClientError::Usage(format!(
                    "you already have a group named {name:?}"
                )));
            }
            for m in &members {
                self.fetch_device_list(m).await?;
            }
            let gid = self.create_local_group(Some(name), None)?;
            if members.is_empty() {
                return Ok(Vec::new());
            }
            self.change_members(&gid, &members, &[]).await
        }
        .await;
        self.recorded(created)
    }

    /// Adds users to a group.
    pub async fn add_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<String>, ClientError> {
        let users = Self::parse_users(users)?;
        let changed = async {
            self.exchange().await?;
            let gid = self.group_by_name(name)?;
            self.change_members(&gid, &users, &[]).await
        }
        .await;
        self.recorded(changed)
    }

    /// Removes users from a group.
    pub async fn remove_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<String>, ClientError> {
        let users = Self::parse_users(users)?;
        if users.contains(&self.me().user) {
            return Err(ClientError::Usage(
                "leaving a group is not supported yet".into(),
            ));
        }
        let changed = async {
            self.exchange().await?;
            let gid = self.group_by_name(name)?;
            self.change_members(&gid, &[], &users).await
        }
        .await;
        self.recorded(changed)
    }

    /// Groups of this device.
    pub fn groups(&self) -> Result<Vec<Conversation>, ClientError> {
        type Row = (Vec<u8>, Option<String>, Option<String>, bool);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare(
                "SELECT group_id, name, peer, active FROM conversations WHERE peer IS NULL ORDER BY created_at, rowid",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?
        };
        rows.into_iter()
            .map(|(gid, name, peer, active)| {
                let g = group::load(&self.provider(), &gid)?;
                Ok(Conversation {
                    id: hex::encode(&gid),
                    name,
                    peer,
                    devices: g.members().count(),
                    epoch: g.epoch().as_u64(),
                    active,
                })
            })
            .collect()
    }

    /// Members of the group named `name`, by user.
    pub fn members(&self, name: &str) -> Result<Vec<Member>, ClientError> {
        let gid = self.group_by_name(name)?;
        let g = group::load(&self.provider(), gid.as_bytes())?;
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in group::members(&g)? {
            by_user
                .entry(m.addr.user.to_string())
                .or_default()
                .push(m.addr.device.to_string());
        }
        Ok(by_user
            .into_iter()
            .map(|(user, devices)| Member { user, devices })
            .collect())
    }
}
