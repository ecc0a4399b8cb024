//! A small safe layer over the CPython C API (pyo3-ffi), written for many interpreters.
//!
//! pyo3's safe layer assumes one interpreter (`PyGILState_*`, process-wide statics for
//! interned strings and type objects), so Spindle does not use it: ARCHITECTURE.md §6. Instead:
//! - [`Gil<'py>`] is proof that the calling thread holds an attached thread state. It is
//!   created only by [`Attached`] (which restores a thread state and saves it on drop) or,
//!   inside a C callback that CPython invoked, by `Gil::assume`.
//! - [`Obj<'py>`] is an owned reference that cannot outlive that proof, so it is always
//!   released by the thread, and under the interpreter, that created it. It is neither
//!   `Send` nor `Sync`.
//! - [`Held`] is a reference kept across attachments (an app object, interned keys). It may
//!   move between threads only inside a structure that documents which interpreter owns
//!   it, and it is only touched while a thread state of that interpreter is attached.
//!
//! This module and its siblings under `py/` are the only places that call into Python.

use std::ffi::{c_char, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use pyo3_ffi as ffi;

/// Proof that the current thread holds an attached thread state (and so the GIL of its
/// interpreter) for the lifetime `'py`.
#[derive(Clone, Copy)]
pub struct Gil<'py> {
    _marker: PhantomData<(&'py (), *mut ())>,
}

impl<'py> Gil<'py> {
    /// # Safety
    /// The calling thread must hold an attached thread state for all of `'py`.
    pub unsafe fn assume() -> Gil<'py> {
        Gil {
            _marker: PhantomData,
        }
    }

    pub fn none(self) -> Obj<'py> {
        // SAFETY: Py_None is an immortal singleton; we hold the GIL.
        unsafe { Obj::from_borrowed_unchecked(self, ffi::Py_None()) }
    }

    pub fn bool(self, value: bool) -> Obj<'py> {
        // SAFETY: Py_True/Py_False are immortal singletons; we hold the GIL.
        unsafe {
            Obj::from_borrowed_unchecked(
                self,
                if value {
                    ffi::Py_True()
                } else {
                    ffi::Py_False()
                },
            )
        }
    }

    /// A `str` from UTF-8 text.
    pub fn str(self, text: &str) -> PyResult<'py, Obj<'py>> {
        // SAFETY: the pointer and length describe `text`, valid UTF-8; we hold the GIL.
        unsafe {
            Obj::from_owned(
                self,
                ffi::PyUnicode_FromStringAndSize(
                    text.as_ptr().cast::<c_char>(),
                    text.len() as ffi::Py_ssize_t,
                ),
            )
        }
    }

    /// A `str` from bytes decoded as latin-1, as PEP 3333 wants for environ values.
    pub fn str_latin1(self, bytes: &[u8]) -> PyResult<'py, Obj<'py>> {
        // SAFETY: the pointer and length describe `bytes`; latin-1 decoding accepts every
        // byte; we hold the GIL.
        unsafe {
            Obj::from_owned(
                self,
                ffi::PyUnicode_DecodeLatin1(
                    bytes.as_ptr().cast::<c_char>(),
                    bytes.len() as ffi::Py_ssize_t,
                    std::ptr::null(),
                ),
            )
        }
    }

    /// An interned `str`, for dictionary keys built once per interpreter.
    pub fn intern(self, text: &CStr) -> PyResult<'py, Obj<'py>> {
        // SAFETY: `text` is NUL-terminated; we hold the GIL.
        unsafe { Obj::from_owned(self, ffi::PyUnicode_InternFromString(text.as_ptr())) }
    }

    pub fn bytes(self, data: &[u8]) -> PyResult<'py, Obj<'py>> {
        // SAFETY: the pointer and length describe `data`; we hold the GIL.
        unsafe {
            Obj::from_owned(
                self,
                ffi::PyBytes_FromStringAndSize(
                    data.as_ptr().cast::<c_char>(),
                    data.len() as ffi::Py_ssize_t,
                ),
            )
        }
    }

    pub fn int(self, value: i64) -> PyResult<'py, Obj<'py>> {
        // SAFETY: we hold the GIL.
        unsafe { Obj::from_owned(self, ffi::PyLong_FromLongLong(value)) }
    }

    pub fn tuple(self, items: &[&Obj<'py>]) -> PyResult<'py, Obj<'py>> {
        // SAFETY: we hold the GIL; PyTuple_SetItem steals the reference we create with
        // Py_IncRef, and every slot is filled before the tuple is used.
        unsafe {
            let tuple = Obj::from_owned(self, ffi::PyTuple_New(items.len() as ffi::Py_ssize_t))?;
            for (i, item) in items.iter().enumerate() {
                ffi::Py_IncRef(item.as_ptr());
                ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, item.as_ptr());
            }
            Ok(tuple)
        }
    }

    pub fn new_dict(self) -> PyResult<'py, Obj<'py>> {
        // SAFETY: we hold the GIL.
        unsafe { Obj::from_owned(self, ffi::PyDict_New()) }
    }

    pub fn import(self, name: &CStr) -> PyResult<'py, Obj<'py>> {
        // SAFETY: `name` is NUL-terminated; we hold the GIL.
        unsafe { Obj::from_owned(self, ffi::PyImport_ImportModule(name.as_ptr())) }
    }

    /// Runs `f` with this thread's state detached (the GIL released), for blocking waits.
    /// Nothing Python may be touched inside `f`: `Send` keeps `Gil` and `Obj` (neither is
    /// `Send`) out of it.
    pub fn allow_threads<T: Send>(self, f: impl FnOnce() -> T + Send) -> T {
        // SAFETY: we hold the GIL (the `Gil` proof), so there is a thread state to save;
        // it is restored before returning, also if `f` panics (the guard).
        let saved = unsafe { ffi::PyEval_SaveThread() };
        struct Restore(*mut ffi::PyThreadState);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: restores exactly the state saved above, on the same thread.
                unsafe { ffi::PyEval_RestoreThread(self.0) }
            }
        }
        let _restore = Restore(saved);
        f()
    }

    /// Raises `exc_type(message)` in Python; return `NULL` to CPython after this.
    pub fn raise(self, exc_type: Borrowed<'_, 'py>, message: &str) {
        let mut text = message.as_bytes().to_vec();
        text.retain(|&b| b != 0);
        text.push(0);
        // SAFETY: `text` is NUL-terminated; `exc_type` is a live exception type of this
        // interpreter (the `Borrowed` contract); we hold the GIL.
        unsafe { ffi::PyErr_SetString(exc_type.as_ptr(), text.as_ptr().cast::<c_char>()) }
    }

    /// A builtin exception type, e.g. `gil.builtin(ffi::PyExc_TypeError)`.
    ///
    /// # Safety
    /// `ptr` must be one of CPython's builtin (immortal) type objects.
    pub unsafe fn builtin(self, ptr: *mut ffi::PyObject) -> Borrowed<'static, 'py> {
        // SAFETY: guaranteed by the caller.
        unsafe { Borrowed::from_ptr(self, ptr) }
    }

    pub fn err_occurred(self) -> bool {
        // SAFETY: we hold the GIL.
        unsafe { !ffi::PyErr_Occurred().is_null() }
    }
}

/// Runs `f` as a C callback body: a Rust panic must never unwind into CPython.
pub fn guard<'py>(
    gil: Gil<'py>,
    f: impl FnOnce() -> PyResult<'py, Obj<'py>>,
) -> *mut ffi::PyObject {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(err)) => {
            err.restore();
            std::ptr::null_mut()
        }
        Err(_) => {
            // SAFETY: SystemError is a builtin type.
            let system_error = unsafe { gil.builtin(ffi::PyExc_SystemError) };
            gil.raise(
                system_error,
                "internal error in Spindle (a bug: please report it)",
            );
            std::ptr::null_mut()
        }
    }
}

/// Raises `ty(message)` and returns it as a `PyErr`.
pub fn raise<'py>(gil: Gil<'py>, ty: Borrowed<'_, 'py>, message: &str) -> PyErr<'py> {
    gil.raise(ty, message);
    PyErr::fetch(gil)
}

pub fn type_error<'py>(gil: Gil<'py>, message: &str) -> PyErr<'py> {
    // SAFETY: a builtin exception type.
    raise(gil, unsafe { gil.builtin(ffi::PyExc_TypeError) }, message)
}

pub fn value_error<'py>(gil: Gil<'py>, message: &str) -> PyErr<'py> {
    // SAFETY: a builtin exception type.
    raise(gil, unsafe { gil.builtin(ffi::PyExc_ValueError) }, message)
}

pub fn runtime_error<'py>(gil: Gil<'py>, message: &str) -> PyErr<'py> {
    // SAFETY: a builtin exception type.
    raise(
        gil,
        unsafe { gil.builtin(ffi::PyExc_RuntimeError) },
        message,
    )
}

/// A `PyMethodDef` CPython may read from any thread: its pointers are static C strings and
/// function pointers, never written after construction.
pub struct MethodDef(pub ffi::PyMethodDef);
// SAFETY: see the type's documentation: immutable data with 'static pointers.
unsafe impl Sync for MethodDef {}

/// A function object for `def`, with `slf` (a capsule, typically) as its `self`.
pub fn new_function<'py>(
    gil: Gil<'py>,
    def: &'static MethodDef,
    slf: Option<&Obj<'py>>,
) -> PyResult<'py, Obj<'py>> {
    let slf = slf.map_or(std::ptr::null_mut(), Obj::as_ptr);
    // SAFETY: `def` is 'static and never written (CPython only reads it); `slf` is a live
    // object of this interpreter (the `Obj` it came from) or NULL; GIL held.
    unsafe {
        Obj::from_owned(
            gil,
            ffi::PyCFunction_NewEx(
                std::ptr::from_ref(&def.0).cast_mut(),
                slf,
                std::ptr::null_mut(),
            ),
        )
    }
}

/// A borrowed reference: valid while whatever it was borrowed from (an [`Obj`], a [`Held`]
/// or a builtin) lives, and only under the attachment `'py`. Layout-compatible with a
/// `PyObject*`, so a slice of them is a C argument vector.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Borrowed<'a, 'py> {
    ptr: NonNull<ffi::PyObject>,
    _marker: PhantomData<(&'a (), Gil<'py>)>,
}

impl<'a, 'py> Borrowed<'a, 'py> {
    /// # Safety
    /// `ptr` must be a live object of the attached interpreter for all of `'a` (e.g. a
    /// builtin type such as `PyExc_TypeError`, which is immortal).
    pub unsafe fn from_ptr(_gil: Gil<'py>, ptr: *mut ffi::PyObject) -> Borrowed<'a, 'py> {
        Borrowed {
            ptr: NonNull::new(ptr).expect("borrowed NULL"),
            _marker: PhantomData,
        }
    }

    #[inline]
    pub fn as_ptr(self) -> *mut ffi::PyObject {
        self.ptr.as_ptr()
    }
}

/// An owned (strong) reference to a Python object of the interpreter `'py` is attached to.
pub struct Obj<'py> {
    ptr: NonNull<ffi::PyObject>,
    gil: Gil<'py>,
}

pub type PyResult<'py, T> = Result<T, PyErr<'py>>;

/// A `str`'s latin-1 form ([`Obj::latin1`]): borrowed from the str when it is ASCII, else a
/// `bytes` object holding the encoding.
pub enum Latin1<'a, 'py> {
    Ascii(&'a [u8]),
    Encoded(Obj<'py>),
}

impl Latin1<'_, '_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Latin1::Ascii(bytes) => bytes,
            // `latin1` made it only from a `bytes` object.
            Latin1::Encoded(obj) => obj.as_bytes().unwrap_or_default(),
        }
    }
}

impl<'py> Obj<'py> {
    /// Takes ownership of a new reference; `NULL` fetches the pending exception.
    ///
    /// # Safety
    /// `ptr` must be NULL (with an exception set) or a new reference owned by the caller.
    pub unsafe fn from_owned(gil: Gil<'py>, ptr: *mut ffi::PyObject) -> PyResult<'py, Obj<'py>> {
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Obj { ptr, gil }),
            None => Err(PyErr::fetch(gil)),
        }
    }

    /// Takes a new reference to a borrowed object.
    ///
    /// # Safety
    /// `ptr` must be a valid, non-NULL object pointer of the attached interpreter.
    pub unsafe fn from_borrowed_unchecked(gil: Gil<'py>, ptr: *mut ffi::PyObject) -> Obj<'py> {
        // SAFETY: the caller guarantees `ptr` is a live object; we hold the GIL.
        unsafe { ffi::Py_IncRef(ptr) };
        Obj {
            ptr: NonNull::new(ptr).expect("borrowed NULL"),
            gil,
        }
    }

    #[inline]
    pub fn as_ptr(&self) -> *mut ffi::PyObject {
        self.ptr.as_ptr()
    }

    /// Gives up ownership: the caller now owns the reference (e.g. to return it to CPython).
    pub fn into_ptr(self) -> *mut ffi::PyObject {
        let ptr = self.ptr.as_ptr();
        std::mem::forget(self);
        ptr
    }

    pub fn gil(&self) -> Gil<'py> {
        self.gil
    }

    pub fn getattr(&self, name: &CStr) -> PyResult<'py, Obj<'py>> {
        // SAFETY: live object, NUL-terminated name, GIL held.
        unsafe {
            Obj::from_owned(
                self.gil,
                ffi::PyObject_GetAttrString(self.as_ptr(), name.as_ptr()),
            )
        }
    }

    /// The attribute, `None` when the object has none (an `AttributeError`, cleared); any
    /// other error raised while looking it up is returned.
    pub fn getattr_optional(&self, name: &CStr) -> PyResult<'py, Option<Obj<'py>>> {
        match self.getattr(name) {
            Ok(attr) => Ok(Some(attr)),
            Err(err)
                if err.is_instance_of(
                    // SAFETY: a builtin exception type.
                    unsafe { self.gil.builtin(ffi::PyExc_AttributeError) },
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// An exact `list` or `tuple`: no instance of either can have attributes of its own.
    pub fn is_exact_list_or_tuple(&self) -> bool {
        // SAFETY: type checks of a live object.
        unsafe {
            ffi::PyList_CheckExact(self.as_ptr()) != 0
                || ffi::PyTuple_CheckExact(self.as_ptr()) != 0
        }
    }

    /// A borrowed view, e.g. to pass as an argument.
    #[inline]
    pub fn borrow(&self) -> Borrowed<'_, 'py> {
        Borrowed {
            ptr: self.ptr,
            _marker: PhantomData,
        }
    }

    /// Calls the object with positional arguments (vectorcall: no argument tuple).
    pub fn call(&self, args: &[Borrowed<'_, 'py>]) -> PyResult<'py, Obj<'py>> {
        // SAFETY: `Borrowed` is a transparent `PyObject*` of a live object of this
        // interpreter, so `args` is a valid C argument vector; GIL held; `nargsf` is the
        // exact count.
        unsafe {
            Obj::from_owned(
                self.gil,
                ffi::PyObject_Vectorcall(
                    self.as_ptr(),
                    args.as_ptr().cast::<*mut ffi::PyObject>(),
                    args.len(),
                    std::ptr::null_mut(),
                ),
            )
        }
    }

    pub fn call_method0(&self, name: &CStr) -> PyResult<'py, Obj<'py>> {
        self.getattr(name)?.call(&[])
    }

    pub fn is_none(&self) -> bool {
        // SAFETY: comparing with the immortal None singleton.
        self.as_ptr() == unsafe { ffi::Py_None() }
    }

    /// The contents of a `bytes` object (exact or subclass), or `None` for other types.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        // SAFETY: type check first; then PyBytes_AsString/Size of a live bytes object give
        // its immutable buffer, valid while `self` holds the reference.
        unsafe {
            if ffi::PyBytes_Check(self.as_ptr()) == 0 {
                return None;
            }
            let data = ffi::PyBytes_AsString(self.as_ptr());
            let len = ffi::PyBytes_Size(self.as_ptr());
            Some(std::slice::from_raw_parts(data.cast::<u8>(), len as usize))
        }
    }

    /// Runs `fill` over the object's memory as one writable, contiguous run of bytes (the
    /// buffer protocol: a `bytearray`, a writable `memoryview` of one, ...); raises what
    /// the object raises when it has no such buffer (`TypeError`, `BufferError`).
    pub fn with_writable_bytes<R>(&self, fill: impl FnOnce(&mut [u8]) -> R) -> PyResult<'py, R> {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: GIL held; on success GetBuffer fills `view` and pins the exporter's memory
        // until PyBuffer_Release. PyBUF_WRITABLE without shape or strides flags asks for one
        // C-contiguous writable run of `len` bytes (the exporter refuses otherwise).
        if unsafe { ffi::PyObject_GetBuffer(self.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_WRITABLE) }
            != 0
        {
            return Err(PyErr::fetch(self.gil));
        }
        /// Releases the view when dropped, so a panic in `fill` cannot leave the object's
        /// buffer exported (a `bytearray` could never be resized again).
        struct View(ffi::Py_buffer);
        impl Drop for View {
            fn drop(&mut self) {
                // SAFETY: releases exactly the view GetBuffer gave, once.
                unsafe { ffi::PyBuffer_Release(&mut self.0) };
            }
        }
        // SAFETY: GetBuffer succeeded, so `view` is initialised.
        let view = View(unsafe { view.assume_init() });
        let len = usize::try_from(view.0.len).unwrap_or(0);
        let bytes: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: `buf` is `len` writable bytes, ours alone until the view is released
            // (no Python code runs in between: `fill` is Rust that cannot reach this object).
            unsafe { std::slice::from_raw_parts_mut(view.0.buf.cast::<u8>(), len) }
        };
        Ok(fill(bytes))
    }

    /// The UTF-8 form of a `str`, or `None` for other types (or lone surrogates).
    pub fn as_str_utf8(&self) -> Option<&[u8]> {
        // SAFETY: type check first; PyUnicode_AsUTF8AndSize returns a buffer cached inside
        // the str object, valid while `self` holds the reference.
        unsafe {
            if ffi::PyUnicode_Check(self.as_ptr()) == 0 {
                return None;
            }
            let mut len: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(self.as_ptr(), &mut len);
            if data.is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            Some(std::slice::from_raw_parts(data.cast::<u8>(), len as usize))
        }
    }

    /// True for an instance of BaseException (or a subclass).
    pub fn is_exception_instance(&self) -> bool {
        // SAFETY: a type check on a live object.
        unsafe { ffi::PyExceptionInstance_Check(self.as_ptr()) != 0 }
    }

    pub fn is_str(&self) -> bool {
        // SAFETY: live object, GIL held.
        unsafe { ffi::PyUnicode_Check(self.as_ptr()) != 0 }
    }

    /// Encodes a `str` as latin-1 (PEP 3333 header values); `None` if a character is out of
    /// range (or for other types).
    pub fn encode_latin1(&self) -> Option<Vec<u8>> {
        self.latin1().map(|text| text.bytes().to_vec())
    }

    /// A `str`'s latin-1 bytes without copying them when it is ASCII (the str's own
    /// buffer, the usual header); `None` as for [`Obj::encode_latin1`].
    pub fn latin1(&self) -> Option<Latin1<'_, 'py>> {
        if let Some(utf8) = self.as_str_utf8() {
            if utf8.is_ascii() {
                return Some(Latin1::Ascii(utf8));
            }
        }
        // SAFETY: live object, GIL held; the result is an owned bytes object or NULL.
        let encoded =
            unsafe { Obj::from_owned(self.gil, ffi::PyUnicode_AsLatin1String(self.as_ptr())) };
        match encoded {
            Ok(bytes) if bytes.as_bytes().is_some() => Some(Latin1::Encoded(bytes)),
            Ok(_) => None,
            Err(_) => None,
        }
    }

    /// The two items of an exact 2-tuple (a WSGI header), or `None`.
    pub fn tuple_pair(&self) -> Option<(Obj<'py>, Obj<'py>)> {
        // SAFETY: an exact type check first; then the size and two borrowed items of a live
        // tuple, each of which we take a reference to at once.
        unsafe {
            let ptr = self.as_ptr();
            if ffi::PyTuple_CheckExact(ptr) == 0 || ffi::PyTuple_Size(ptr) != 2 {
                return None;
            }
            Some((
                Obj::from_borrowed_unchecked(self.gil, ffi::PyTuple_GetItem(ptr, 0)),
                Obj::from_borrowed_unchecked(self.gil, ffi::PyTuple_GetItem(ptr, 1)),
            ))
        }
    }

    pub fn dict_set(&self, key: Borrowed<'_, 'py>, value: &Obj<'py>) -> PyResult<'py, ()> {
        // SAFETY: `self` is a dict and `key` a live object of this interpreter; GIL held.
        // PyDict_SetItem does not steal references.
        let rc = unsafe { ffi::PyDict_SetItem(self.as_ptr(), key.as_ptr(), value.as_ptr()) };
        self.check(rc)
    }

    /// Removes `key` from a dict (an error if it is absent).
    pub fn dict_del(&self, key: Borrowed<'_, 'py>) -> PyResult<'py, ()> {
        // SAFETY: `self` is a dict and `key` a live object of this interpreter; GIL held.
        let rc = unsafe { ffi::PyDict_DelItem(self.as_ptr(), key.as_ptr()) };
        self.check(rc)
    }

    /// Sets `key` to `value` in a dict unless it is there already; the value the dict has
    /// afterwards. One lookup instead of two. (Whether it was there: compare `dict_len`
    /// before and after; the value may be a cached singleton, so identity does not tell.)
    pub fn dict_set_default(
        &self,
        key: Borrowed<'_, 'py>,
        value: &Obj<'py>,
    ) -> PyResult<'py, Obj<'py>> {
        // SAFETY: `self` is a dict and `key`/`value` live objects of this interpreter; GIL
        // held. The result is borrowed from the dict, so we take our own reference at once.
        unsafe {
            let found = ffi::PyDict_SetDefault(self.as_ptr(), key.as_ptr(), value.as_ptr());
            if found.is_null() {
                return Err(PyErr::fetch(self.gil));
            }
            Ok(Obj::from_borrowed_unchecked(self.gil, found))
        }
    }

    /// The number of items in a dict.
    pub fn dict_len(&self) -> usize {
        // SAFETY: `self` is a live dict; GIL held.
        unsafe { ffi::PyDict_Size(self.as_ptr()) as usize }
    }

    /// Looks `key` up in a dict; `None` when absent.
    pub fn dict_get(&self, key: Borrowed<'_, 'py>) -> Option<Obj<'py>> {
        // SAFETY: `self` is a dict, `key` a live object; the result is borrowed, so we take
        // our own reference before anything can change the dict.
        unsafe {
            let found = ffi::PyDict_GetItemWithError(self.as_ptr(), key.as_ptr());
            if found.is_null() {
                ffi::PyErr_Clear();
                None
            } else {
                Some(Obj::from_borrowed_unchecked(self.gil, found))
            }
        }
    }

    pub fn dict_copy(&self) -> PyResult<'py, Obj<'py>> {
        // SAFETY: `self` is a dict; GIL held.
        unsafe { Obj::from_owned(self.gil, ffi::PyDict_Copy(self.as_ptr())) }
    }

    pub fn iter(&self) -> PyResult<'py, Obj<'py>> {
        // SAFETY: live object, GIL held.
        unsafe { Obj::from_owned(self.gil, ffi::PyObject_GetIter(self.as_ptr())) }
    }

    /// The next item of an iterator; `Ok(None)` when it is exhausted.
    pub fn next(&self) -> PyResult<'py, Option<Obj<'py>>> {
        // SAFETY: `self` is an iterator (from `iter`); GIL held. NULL without an exception
        // set means exhaustion.
        unsafe {
            let item = ffi::PyIter_Next(self.as_ptr());
            if item.is_null() {
                if ffi::PyErr_Occurred().is_null() {
                    Ok(None)
                } else {
                    Err(PyErr::fetch(self.gil))
                }
            } else {
                Ok(Some(Obj {
                    ptr: NonNull::new_unchecked(item),
                    gil: self.gil,
                }))
            }
        }
    }

    /// Item `index` of an exact `list` (a new reference); `None` past its end, and for any
    /// other type (a subclass may define its own iteration: use [`Obj::iter`]).
    pub fn exact_list_item(&self, index: usize) -> Option<Obj<'py>> {
        // SAFETY: exact type check first; the size and borrowed item of a live list, whose
        // item we take a reference to at once; GIL held.
        unsafe {
            let ptr = self.as_ptr();
            if ffi::PyList_CheckExact(ptr) == 0 || index >= ffi::PyList_Size(ptr) as usize {
                return None;
            }
            Some(Obj::from_borrowed_unchecked(
                self.gil,
                ffi::PyList_GetItem(ptr, index as ffi::Py_ssize_t),
            ))
        }
    }

    /// For an exact `list` or `tuple`: its items (new references). `None` for other types.
    pub fn sequence_items(&self) -> Option<Vec<Obj<'py>>> {
        // SAFETY: exact type checks first; then the size and borrowed items of a live list or
        // tuple, each of which we take a reference to immediately.
        unsafe {
            let ptr = self.as_ptr();
            let list = ffi::PyList_CheckExact(ptr) != 0;
            if !list && ffi::PyTuple_CheckExact(ptr) == 0 {
                return None;
            }
            let len = if list {
                ffi::PyList_Size(ptr)
            } else {
                ffi::PyTuple_Size(ptr)
            };
            let mut items = Vec::with_capacity(len as usize);
            for i in 0..len {
                let item = if list {
                    ffi::PyList_GetItem(ptr, i)
                } else {
                    ffi::PyTuple_GetItem(ptr, i)
                };
                items.push(Obj::from_borrowed_unchecked(self.gil, item));
            }
            Some(items)
        }
    }

    /// True when `self`'s type is exactly `ty`.
    pub fn is_exact_instance(&self, ty: *mut ffi::PyObject) -> bool {
        // SAFETY: Py_TYPE of a live object.
        unsafe { ffi::Py_TYPE(self.as_ptr()).cast::<ffi::PyObject>() == ty }
    }

    pub fn type_name(&self) -> String {
        // SAFETY: Py_TYPE of a live object; tp_name is a NUL-terminated C string owned by
        // the type, which outlives this call.
        unsafe {
            let ty = ffi::Py_TYPE(self.as_ptr());
            CStr::from_ptr((*ty).tp_name).to_string_lossy().into_owned()
        }
    }

    /// `str(self)`, lossy, for messages.
    pub fn to_string_lossy(&self) -> String {
        // SAFETY: live object, GIL held.
        let text = unsafe { Obj::from_owned(self.gil, ffi::PyObject_Str(self.as_ptr())) };
        match text {
            Ok(text) => String::from_utf8_lossy(text.as_str_utf8().unwrap_or(b"?")).into_owned(),
            Err(_) => "<unprintable>".to_string(),
        }
    }

    pub fn as_i64(&self) -> PyResult<'py, i64> {
        // SAFETY: live object, GIL held.
        let value = unsafe { ffi::PyLong_AsLongLong(self.as_ptr()) };
        if value == -1 && self.gil.err_occurred() {
            return Err(PyErr::fetch(self.gil));
        }
        Ok(value)
    }

    /// Keeps this reference beyond the current attachment (see [`Held`]).
    pub fn hold(self) -> Held {
        Held(self.into_ptr_nonnull())
    }

    fn into_ptr_nonnull(self) -> NonNull<ffi::PyObject> {
        let ptr = self.ptr;
        std::mem::forget(self);
        ptr
    }

    fn check(&self, rc: std::ffi::c_int) -> PyResult<'py, ()> {
        if rc < 0 {
            Err(PyErr::fetch(self.gil))
        } else {
            Ok(())
        }
    }
}

impl Clone for Obj<'_> {
    fn clone(&self) -> Self {
        // SAFETY: live object, GIL held (the `'py` proof).
        unsafe { ffi::Py_IncRef(self.as_ptr()) };
        Obj {
            ptr: self.ptr,
            gil: self.gil,
        }
    }
}

impl Drop for Obj<'_> {
    fn drop(&mut self) {
        // SAFETY: we own one reference and hold the GIL of its interpreter for `'py`.
        unsafe { ffi::Py_DecRef(self.as_ptr()) }
    }
}

/// A strong reference kept across attachments. It does not release itself: its owner calls
/// [`Held::release`] while attached to the interpreter the object belongs to (or leaks it
/// on purpose when the interpreter is about to be finalised anyway).
pub struct Held(NonNull<ffi::PyObject>);

// SAFETY: a `Held` is only dereferenced through `bind`/`ptr`, which demand a `Gil` proof;
// the structures holding one (`py::Interp`) document that it is used only while attached
// to the interpreter that created it. Moving the pointer value between threads is harmless.
unsafe impl Send for Held {}
// SAFETY: as above; shared access never touches the object without its interpreter's GIL.
unsafe impl Sync for Held {}

impl Held {
    /// A new owned reference for this attachment.
    pub fn bind<'py>(&self, gil: Gil<'py>) -> Obj<'py> {
        // SAFETY: the object is alive (we hold a reference) and belongs to the interpreter
        // the caller is attached to (the invariant of the owning structure).
        unsafe { Obj::from_borrowed_unchecked(gil, self.0.as_ptr()) }
    }

    /// A borrowed view for this attachment.
    #[inline]
    pub fn borrow<'py>(&self, _gil: Gil<'py>) -> Borrowed<'_, 'py> {
        Borrowed {
            ptr: self.0,
            _marker: PhantomData,
        }
    }

    /// The raw pointer, for identity comparisons and C callback state.
    #[inline]
    pub fn ptr(&self, _gil: Gil<'_>) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    pub fn release(self, gil: Gil<'_>) {
        drop(Obj { ptr: self.0, gil });
    }
}

/// A raised Python exception (the exception instance), taken out of the thread's error
/// indicator.
pub struct PyErr<'py> {
    exc: Obj<'py>,
}

impl<'py> PyErr<'py> {
    /// Takes the pending exception; if none is set (a C-API contract violation somewhere),
    /// makes a `SystemError` so callers always get one.
    pub fn fetch(gil: Gil<'py>) -> PyErr<'py> {
        #[cfg(Py_3_12)]
        // SAFETY: GIL held; returns a new reference or NULL.
        let exc = unsafe { ffi::PyErr_GetRaisedException() };
        #[cfg(not(Py_3_12))]
        // SAFETY: GIL held; Fetch hands us three owned references (any may be NULL), which
        // Normalize turns into an instance; we keep the value and release the others.
        let exc = unsafe {
            let mut ty = std::ptr::null_mut();
            let mut value = std::ptr::null_mut();
            let mut tb = std::ptr::null_mut();
            ffi::PyErr_Fetch(&mut ty, &mut value, &mut tb);
            if ty.is_null() {
                std::ptr::null_mut()
            } else {
                ffi::PyErr_NormalizeException(&mut ty, &mut value, &mut tb);
                if !tb.is_null() && !value.is_null() {
                    ffi::PyException_SetTraceback(value, tb);
                }
                ffi::Py_XDECREF(ty);
                ffi::Py_XDECREF(tb);
                value
            }
        };
        match NonNull::new(exc) {
            Some(ptr) => PyErr {
                exc: Obj { ptr, gil },
            },
            None => {
                // SAFETY: SystemError is a builtin type.
                let system_error = unsafe { gil.builtin(ffi::PyExc_SystemError) };
                gil.raise(
                    system_error,
                    "a C-API call failed without setting an exception",
                );
                PyErr::fetch(gil)
            }
        }
    }

    pub fn from_instance(exc: Obj<'py>) -> PyErr<'py> {
        PyErr { exc }
    }

    /// The exception is an instance of `ty` (a class, or a tuple of them).
    pub fn is_instance_of(&self, ty: Borrowed<'_, 'py>) -> bool {
        // SAFETY: a live exception instance and type object; GIL held.
        unsafe { ffi::PyErr_GivenExceptionMatches(self.exc.as_ptr(), ty.as_ptr()) != 0 }
    }

    pub fn instance(&self) -> &Obj<'py> {
        &self.exc
    }

    /// Puts the exception back as the thread's pending exception (to return NULL to CPython).
    pub fn restore(self) {
        let ptr = self.exc.into_ptr();
        #[cfg(Py_3_12)]
        // SAFETY: GIL held; SetRaisedException steals our reference.
        unsafe {
            ffi::PyErr_SetRaisedException(ptr)
        };
        #[cfg(not(Py_3_12))]
        // SAFETY: GIL held; PyErr_Restore steals the three references we pass (type and
        // traceback taken from the instance with new references).
        unsafe {
            let ty = ffi::Py_TYPE(ptr).cast::<ffi::PyObject>();
            ffi::Py_IncRef(ty);
            let tb = ffi::PyException_GetTraceback(ptr);
            ffi::PyErr_Restore(ty, ptr, tb);
        }
    }

    /// "TypeName: message", one line.
    pub fn summary(&self) -> String {
        let name = self.exc.type_name();
        let short = name.rsplit('.').next().unwrap_or(&name).to_string();
        let message = self.exc.to_string_lossy();
        if message.is_empty() {
            short
        } else {
            format!("{short}: {}", message.replace('\n', " "))
        }
    }
}

/// An attached thread state: restores it on creation, saves it (releasing the GIL) on drop.
pub struct Attached<'t> {
    _tstate: PhantomData<&'t mut ffi::PyThreadState>,
}

impl<'t> Attached<'t> {
    /// # Safety
    /// `tstate` must be a valid thread state created for the calling thread and not
    /// currently attached anywhere.
    pub unsafe fn restore(tstate: *mut ffi::PyThreadState) -> Attached<'t> {
        // SAFETY: guaranteed by the caller.
        unsafe { ffi::PyEval_RestoreThread(tstate) };
        Attached {
            _tstate: PhantomData,
        }
    }

    pub fn gil(&self) -> Gil<'_> {
        // SAFETY: the thread state is attached for as long as `self` lives.
        unsafe { Gil::assume() }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        // SAFETY: the state restored in `restore` is still attached on this thread.
        unsafe {
            ffi::PyEval_SaveThread();
        }
    }
}

/// References to release later, by the thread that owns their interpreter: where
/// [`SharedBytes`] send their object when the I/O thread is done with them. The queue itself
/// is the hand-off's (knows no Python, checked under loom); its owner drains it with
/// `releases.drain(|obj| obj.release(gil))`.
pub type ReleaseQueue = crate::handoff::ReleaseQueue<Held>;

/// The data of a `bytes` object, readable from any thread without its GIL, for as long as
/// this lives: the object is kept alive by a reference that, on drop, goes to the
/// [`ReleaseQueue`] of the interpreter's thread (Python objects are only released there).
/// How a large response body reaches the socket without a copy.
pub struct SharedBytes {
    /// `None` only during drop.
    obj: Option<Held>,
    data: NonNull<u8>,
    len: usize,
    releases: std::sync::Arc<ReleaseQueue>,
}

// SAFETY: the data of a `bytes` object is immutable and lives as long as the object, which
// the reference in `obj` keeps alive; reading it needs no GIL. The object itself is never
// touched off its thread: `drop` only moves the reference into the release queue, which
// its interpreter's thread drains under its GIL.
unsafe impl Send for SharedBytes {}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `data`/`len` are the buffer of the live, immutable bytes object (above).
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            self.releases.push(obj);
        }
    }
}

impl Obj<'_> {
    /// Shares a `bytes` object's data with other threads (see [`SharedBytes`]); `None` for
    /// other types. The reference goes to `releases` when the last user drops it.
    pub fn share_bytes(&self, releases: &std::sync::Arc<ReleaseQueue>) -> Option<SharedBytes> {
        let (data, len) = {
            let bytes = self.as_bytes()?;
            (NonNull::new(bytes.as_ptr().cast_mut())?, bytes.len())
        };
        releases.shared();
        Some(SharedBytes {
            obj: Some(self.clone().hold()),
            data,
            len,
            releases: releases.clone(),
        })
    }
}
