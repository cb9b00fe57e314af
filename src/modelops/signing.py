"""Sign (trainer) and verify (model server) model folders with OpenSSF model-signing.

The trainer writes an identity file (model name + run id) into the model folder, then signs a digest of every
file with an elliptic-curve private key: a Sigstore bundle `modelops.sig` next to the files. A server holds only
the public key (or a certificate carrying it) and refuses a folder that is unsigned, signed by another key, has
a changed/missing/extra file, or whose identity names another model or run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelops.errors import ConfigError, ModelRefused

log = logging.getLogger(__name__)

SIGNATURE_FILE = "modelops.sig"
IDENTITY_FILE = "modelops-identity.json"
# Written by MLflow's client into a downloaded `models:/` folder; nothing we load reads it.
CLIENT_FILES = ("registered_model_meta",)


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """A new P-256 key pair: private key PEM (mode 0600, never overwritten) and public key PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _hashing(model_dir: Path, ignore: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(
        paths=[str((model_dir / name).resolve()) for name in (SIGNATURE_FILE, *ignore)]
    )


def sign_model(model_dir: Path, private_key_path: Path, *, model_name: str, run_id: str) -> None:
    """Bind the folder to (model_name, run_id) and sign every file in it."""
    from model_signing import signing

    if not private_key_path.is_file():
        raise ConfigError(f"signing key {private_key_path} does not exist", field="signing_key_path")
    (model_dir / IDENTITY_FILE).write_text(json.dumps({"model_name": model_name, "run_id": run_id}))
    try:
        signing.Config().use_elliptic_key_signer(private_key=str(private_key_path)).set_hashing_config(
            _hashing(model_dir)
        ).sign(str(model_dir.resolve()), str((model_dir / SIGNATURE_FILE).resolve()))
    except ValueError as exc:  # wrong key type or an unreadable key
        raise ConfigError(f"cannot sign with {private_key_path}: {exc}", field="signing_key_path") from exc


def _public_key_pem(path: Path) -> bytes:
    """The PEM public key in `path`, which holds a public key or an X.509 certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"signing public key {path} cannot be read: {exc.strerror}", field="signing_public_key_path"
        ) from exc
    try:
        key = (
            x509.load_pem_x509_certificate(raw).public_key()
            if b"BEGIN CERTIFICATE" in raw
            else serialization.load_pem_public_key(raw)
        )
    except ValueError as exc:
        raise ConfigError(
            f"{path} holds no PEM public key or certificate", field="signing_public_key_path"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(
            f"{path}: model signing needs an elliptic-curve key", field="signing_public_key_path"
        )
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Verifier:
    """Checks model folders against one trusted public key (loaded once, at start-up)."""

    public_key_file: Path

    @classmethod
    def from_path(cls, path: Path | None) -> Verifier:
        """ConfigError when no usable key is configured: a server never loads unverified models."""
        if path is None:
            raise ConfigError(
                "no signing public key: set MODELOPS_SIGNING_PUBLIC_KEY_PATH (the server loads only "
                "models signed by the trainer's key)",
                field="signing_public_key_path",
            )
        return cls._from_pem(_public_key_pem(path))

    @classmethod
    def _from_pem(cls, pem: bytes) -> Verifier:
        # model-signing reads the key from a file: one of our own, holding only the public key
        fd, name = tempfile.mkstemp(prefix="modelops-signing-", suffix=".pem")
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return cls(Path(name))

    @classmethod
    def from_private_key(cls, path: Path) -> Verifier:
        """The verifier matching a private key: the trainer checks the champion it compares against."""
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc}", field="signing_key_path") from exc
        return cls._from_pem(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def verify(self, model_dir: Path, *, model_name: str, run_id: str | None) -> None:
        """ModelRefused (with a reason label) unless the folder is exactly what the trainer signed for
        this model and run."""
        from model_signing import verifying

        signature = model_dir / SIGNATURE_FILE
        if not signature.is_file():
            raise ModelRefused("the model is not signed", reason="unsigned")
        try:
            verifying.Config().use_elliptic_key_verifier(
                public_key=str(self.public_key_file)
            ).set_hashing_config(_hashing(model_dir, CLIENT_FILES)).verify(
                str(model_dir.resolve()), str(signature.resolve())
            )
        except ValueError as exc:
            text = str(exc)
            if "Key mismatch" in text:
                raise ModelRefused("the model is signed by an unknown key", reason="unknown_key") from None
            if "mismatch" in text.lower() or "files" in text.lower():
                raise ModelRefused(
                    f"the model's files differ from its signature: {_short(text)}", reason="tampered"
                ) from None
            raise ModelRefused(
                f"the signature does not verify: {_short(text)}", reason="bad_signature"
            ) from None
        except Exception as exc:  # a malformed bundle: never serve it
            raise ModelRefused(
                f"the signature cannot be read: {type(exc).__name__}", reason="bad_signature"
            ) from None
        try:
            identity = json.loads((model_dir / IDENTITY_FILE).read_text())
        except (OSError, ValueError):
            raise ModelRefused("the signed model has no identity file", reason="identity_mismatch") from None
        if identity.get("model_name") != model_name or (run_id and identity.get("run_id") != run_id):
            raise ModelRefused(
                f"the signature was made for model {identity.get('model_name')!r} run "
                f"{identity.get('run_id')!r}, not {model_name!r} run {run_id!r}",
                reason="identity_mismatch",
            )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
