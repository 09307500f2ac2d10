//! Static objects for Rust servers: objects kept in memory under a key of the `static` loader,
//! with fields, references and methods, and `obj_update` / `obj_new` / `obj_delete` that tell
//! the clients holding them.

use crate::codec::{ObjectState, Value};
use crate::error::BrokerError;
use crate::key::{Key, KeyPart, ObjRef};
use crate::server::{Args, Loader, Peer, Server, STATIC_LOADER};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A method of a static object.
pub type Method = Arc<dyn Fn(&Peer, Args) -> Result<Value, BrokerError> + Send + Sync>;

/// Decides whether a user may see an object (an export limited to certain users).
pub type Allow = Arc<dyn Fn(&Peer) -> bool + Send + Sync>;

/// One static object.
#[derive(Clone, Default)]
pub struct StaticObject {
    pub class: String,
    pub fields: Vec<(String, Value)>,
    /// References to other objects by key (None: no object).
    pub refs: Vec<(String, Option<Key>)>,
    /// Lists of references.
    pub backrefs: Vec<(String, Vec<Key>)>,
    pub methods: HashMap<String, Method>,
    /// None: every approved node may see it.
    pub allow: Option<Allow>,
}

impl StaticObject {
    pub fn new(class: &str) -> StaticObject {
        StaticObject {
            class: class.to_string(),
            ..Default::default()
        }
    }

    pub fn field(mut self, name: &str, v: impl Into<Value>) -> StaticObject {
        self.fields.push((name.to_string(), v.into()));
        self
    }

    pub fn reference(mut self, name: &str, to: Option<Key>) -> StaticObject {
        self.refs.push((name.to_string(), to));
        self
    }

    pub fn list(mut self, name: &str, to: Vec<Key>) -> StaticObject {
        self.backrefs.push((name.to_string(), to));
        self
    }

    pub fn method(
        mut self,
        name: &str,
        f: impl Fn(&Peer, Args) -> Result<Value, BrokerError> + Send + Sync + 'static,
    ) -> StaticObject {
        self.methods.insert(name.to_string(), Arc::new(f));
        self
    }

    pub fn only_for(mut self, allow: impl Fn(&Peer) -> bool + Send + Sync + 'static) -> Self {
        self.allow = Some(Arc::new(allow));
        self
    }
}

/// The `static` loader's objects. Added to a server by [`Statics::install`].
#[derive(Clone, Default)]
pub struct Statics {
    objects: Arc<RwLock<HashMap<Vec<KeyPart>, StaticObject>>>,
    server: Arc<RwLock<Option<Server>>>,
}

impl Statics {
    /// Makes these objects the server's `static` loader.
    pub fn install(&self, server: &Server) {
        server.add_loader(STATIC_LOADER, Arc::new(self.clone()));
        *self.server.write().unwrap_or_else(|p| p.into_inner()) = Some(server.clone());
    }

    fn with_server(&self, f: impl FnOnce(&Server)) {
        if let Some(s) = self
            .server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            f(s);
        }
    }

    /// Adds (or replaces) the object at `('static', *parts)`; returns its key.
    pub fn add(&self, parts: Vec<KeyPart>, obj: StaticObject) -> Key {
        let key = Key {
            loader: STATIC_LOADER.to_string(),
            parts: parts.clone(),
        };
        let class = obj.class.clone();
        let replaced = self
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(parts, obj)
            .is_some();
        if replaced {
            self.with_server(|s| s.invalidate(std::slice::from_ref(&key)));
        }
        self.with_server(|s| s.class_changed(&class));
        key
    }

    /// `obj_update`: changes fields (and references) of the object, and tells the clients
    /// holding it.
    pub fn update(
        &self,
        key: &Key,
        fields: Vec<(String, Value)>,
        refs: Vec<(String, Option<Key>)>,
    ) -> Result<(), BrokerError> {
        let class = {
            let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
            let obj = objects
                .get_mut(&key.parts)
                .ok_or_else(|| BrokerError::NotFound(key.to_string()))?;
            for (name, v) in fields {
                match obj.fields.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = v,
                    None => obj.fields.push((name, v)),
                }
            }
            for (name, r) in refs {
                match obj.refs.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = r,
                    None => obj.refs.push((name, r)),
                }
            }
            obj.class.clone()
        };
        self.with_server(|s| {
            s.invalidate(std::slice::from_ref(key));
            s.class_changed(&class);
        });
        Ok(())
    }

    /// `obj_delete`: the object is gone; clients holding it are told, and fetching it again
    /// answers not found.
    pub fn delete(&self, key: &Key) -> Result<(), BrokerError> {
        let removed = self
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key.parts)
            .ok_or_else(|| BrokerError::NotFound(key.to_string()))?;
        self.with_server(|s| {
            s.invalidate(std::slice::from_ref(key));
            s.class_changed(&removed.class);
        });
        Ok(())
    }

    fn get(&self, peer: &Peer, key: &Key) -> Result<StaticObject, BrokerError> {
        let obj = self
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key.parts)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound(key.to_string()))?;
        if let Some(allow) = &obj.allow {
            if !allow(peer) {
                return Err(BrokerError::Permission(format!(
                    "object {key} is not shared with user {}",
                    peer.user_id
                )));
            }
        }
        Ok(obj)
    }
}

impl Loader for Statics {
    fn fetch(&self, peer: &Peer, key: &Key) -> Result<ObjectState, BrokerError> {
        let obj = self.get(peer, key)?;
        Ok(ObjectState {
            key: ObjRef::unsigned(key.clone()),
            class: obj.class.clone(),
            fields: obj.fields.clone(),
            refs: obj
                .refs
                .iter()
                .map(|(n, k)| (n.clone(), k.clone().map(ObjRef::unsigned)))
                .collect(),
            backrefs: obj.backrefs.iter().map(|(n, _)| n.clone()).collect(),
            methods: {
                let mut m: Vec<String> = obj.methods.keys().cloned().collect();
                m.sort();
                m
            },
        })
    }

    fn call(&self, peer: &Peer, key: &Key, method: &str, args: Args) -> Result<Value, BrokerError> {
        let obj = self.get(peer, key)?;
        let f = obj.methods.get(method).cloned().ok_or_else(|| {
            BrokerError::Unknown(format!("object {key} exports no method `{method}`"))
        })?;
        f(peer, args)
    }

    fn backref(&self, peer: &Peer, key: &Key, name: &str) -> Result<Vec<Value>, BrokerError> {
        let obj = self.get(peer, key)?;
        let (_, keys) = obj
            .backrefs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| BrokerError::Unknown(format!("object {key} has no list `{name}`")))?;
        Ok(keys
            .iter()
            .map(|k| Value::Ref(ObjRef::unsigned(k.clone())))
            .collect())
    }
}
