package iamtest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"time"
)

// IdentityProvider is an OIDC identity provider IAM trusts. In JSON (the admin API),
// signing_key is a string holding the JWKS document, as IAM's OIDC configuration takes it; a
// JWKS object, or the base64 a []byte would marshal to, is accepted too.
type IdentityProvider struct {
	ID         string   `json:"id"`
	Issuer     string   `json:"issuer"`      // must equal the JWT's iss
	ClientIDs  []string `json:"client_ids"`  // the JWT's aud must contain one of them
	SigningKey []byte   `json:"signing_key"` // a JWKS document (JSON), as IAM's OIDC config takes it: RSA (RS256) and EC P-256 (ES256) keys
}

type identityProviderJSON struct {
	ID         string          `json:"id"`
	Issuer     string          `json:"issuer"`
	ClientIDs  []string        `json:"client_ids"`
	SigningKey json.RawMessage `json:"signing_key"`
}

// MarshalJSON writes signing_key as a JSON string holding the JWKS document.
func (p IdentityProvider) MarshalJSON() ([]byte, error) {
	key, err := json.Marshal(string(p.SigningKey))
	if err != nil {
		return nil, fmt.Errorf("marshal signing_key: %w", err)
	}
	return json.Marshal(identityProviderJSON{ID: p.ID, Issuer: p.Issuer, ClientIDs: p.ClientIDs, SigningKey: key})
}

// UnmarshalJSON reads signing_key as a string holding the JWKS document, a JWKS object, or the
// base64 of the document. Unknown fields are refused.
func (p *IdentityProvider) UnmarshalJSON(b []byte) error {
	var v identityProviderJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("identity provider: %w", err)
	}
	*p = IdentityProvider{ID: v.ID, Issuer: v.Issuer, ClientIDs: v.ClientIDs}
	raw := bytes.TrimSpace(v.SigningKey)
	switch {
	case len(raw) == 0 || string(raw) == "null":
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("identity provider: signing_key: %w", err)
		}
		p.SigningKey = []byte(s)
		if t := strings.TrimSpace(s); t != "" && t[0] != '{' {
			if doc, err := base64.StdEncoding.DecodeString(t); err == nil {
				p.SigningKey = doc
			}
		}
	default:
		p.SigningKey = slices.Clone(raw)
	}
	return nil
}

type idpEntry struct {
	IdentityProvider
	keys []verifyKey
}

// The JWS algorithms an identity provider's id_token may be signed with.
const (
	AlgRS256 = "RS256"
	AlgES256 = "ES256"
)

const (
	// jwtLeeway is how far in the future nbf and iat may be.
	jwtLeeway = 60 * time.Second
	// minRSABits is the smallest RSA modulus a JWKS may hold.
	minRSABits = 1024
	// maxJWTBytes bounds the id_token accepted.
	maxJWTBytes = 64 << 10
)

// jwk is one key of a JWKS document, as RFC 7517 writes it.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// verifyKey is a parsed JWKS key.
type verifyKey struct {
	kid string
	alg string // AlgRS256 or AlgES256
	rsa *rsa.PublicKey
	ec  *ecdsa.PublicKey
}

// parseJWKS parses and validates a JWKS document: {"keys":[...]} holding RSA keys (for RS256)
// and EC P-256 keys (for ES256). An error names what is wrong, never key material.
func parseJWKS(doc []byte) ([]verifyKey, error) {
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil, errors.New("the signing key is empty: want a JWKS document {\"keys\":[...]}")
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("the signing key is not a JWKS document: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("the JWKS document has no keys")
	}
	keys := make([]verifyKey, 0, len(set.Keys))
	for i, k := range set.Keys {
		vk, err := parseJWK(k)
		if err != nil {
			if k.Kid != "" {
				return nil, fmt.Errorf("JWKS key %d (kid %q): %w", i, k.Kid, err)
			}
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		keys = append(keys, vk)
	}
	return keys, nil
}

func parseJWK(k jwk) (verifyKey, error) {
	if k.Use != "" && k.Use != "sig" {
		return verifyKey{}, fmt.Errorf("use is %q, want \"sig\"", k.Use)
	}
	switch k.Kty {
	case "RSA":
		if k.Alg != "" && k.Alg != AlgRS256 {
			return verifyKey{}, fmt.Errorf("alg %q is not supported for an RSA key, want %s", k.Alg, AlgRS256)
		}
		pub, err := parseRSAKey(k)
		if err != nil {
			return verifyKey{}, err
		}
		return verifyKey{kid: k.Kid, alg: AlgRS256, rsa: pub}, nil
	case "EC":
		if k.Alg != "" && k.Alg != AlgES256 {
			return verifyKey{}, fmt.Errorf("alg %q is not supported for an EC key, want %s", k.Alg, AlgES256)
		}
		pub, err := parseECKey(k)
		if err != nil {
			return verifyKey{}, err
		}
		return verifyKey{kid: k.Kid, alg: AlgES256, ec: pub}, nil
	case "":
		return verifyKey{}, errors.New("kty is missing")
	default:
		return verifyKey{}, fmt.Errorf("kty %q is not supported, want RSA or EC", k.Kty)
	}
}

func parseRSAKey(k jwk) (*rsa.PublicKey, error) {
	n, err := b64Field("n", k.N)
	if err != nil {
		return nil, err
	}
	e, err := b64Field("e", k.E)
	if err != nil {
		return nil, err
	}
	if len(e) > 4 {
		return nil, errors.New("the RSA exponent e is too large")
	}
	exp := new(big.Int).SetBytes(e).Int64()
	if exp < 3 || exp%2 == 0 || exp > math.MaxInt32 {
		return nil, errors.New("the RSA exponent e is not valid")
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp)}
	if bits := pub.N.BitLen(); bits < minRSABits {
		return nil, fmt.Errorf("the RSA modulus has %d bits, want at least %d", bits, minRSABits)
	}
	return pub, nil
}

func parseECKey(k jwk) (*ecdsa.PublicKey, error) {
	if k.Crv != "P-256" {
		return nil, fmt.Errorf("crv %q is not supported, want P-256", k.Crv)
	}
	x, err := b64Field("x", k.X)
	if err != nil {
		return nil, err
	}
	y, err := b64Field("y", k.Y)
	if err != nil {
		return nil, err
	}
	if len(x) != 32 || len(y) != 32 {
		return nil, errors.New("x and y of a P-256 key must be 32 bytes each")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), slices.Concat([]byte{4}, x, y))
	if err != nil {
		return nil, errors.New("x and y are not a point of P-256")
	}
	return pub, nil
}

func b64Field(name, v string) ([]byte, error) {
	if v == "" {
		return nil, fmt.Errorf("%s is missing", name)
	}
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64url without padding", name)
	}
	return b, nil
}

// jwtClaims are the id_token claims IAM checks.
type jwtClaims struct {
	Iss string          `json:"iss"`
	Sub string          `json:"sub"`
	Aud json.RawMessage `json:"aud"`
	Exp *json.Number    `json:"exp"`
	Nbf *json.Number    `json:"nbf"`
	Iat *json.Number    `json:"iat"`
}

// jwtError is a refused id_token, with the IAM answer to give.
func jwtError(status int, code, format string, args ...any) *iamError {
	return &iamError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// verifyIDToken checks an id_token against an identity provider: its signature, iss, aud and
// validity period. It returns the subject. Errors never hold the token, only claim values.
func verifyIDToken(token string, idp *idpEntry, now time.Time) (string, *iamError) {
	if len(token) > maxJWTBytes {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token is longer than %d bytes", maxJWTBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token is not a compact JWS: it has %d parts, want 3", len(parts))
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if err := decodeSegment(parts[0], &header); err != nil {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token's header %v", err)
	}
	var claims jwtClaims
	if err := decodeSegment(parts[1], &claims); err != nil {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token's payload %v", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token's signature is not base64url without padding")
	}
	if header.Alg != AlgRS256 && header.Alg != AlgES256 {
		return "", jwtError(http.StatusUnauthorized, CodeUnsupportedAlg, "the id_token's alg %q is not supported, want %s or %s", header.Alg, AlgRS256, AlgES256)
	}
	if aerr := checkJWTSignature(parts[0]+"."+parts[1], sig, header.Alg, header.Kid, idp); aerr != nil {
		return "", aerr
	}
	return checkClaims(&claims, idp, now)
}

// decodeSegment decodes a base64url JSON object of a compact JWS.
func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return errors.New("is not base64url without padding")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errors.New("is not a JSON object of the expected types")
	}
	return nil
}

func checkJWTSignature(signingInput string, sig []byte, alg, kid string, idp *idpEntry) *iamError {
	// The key with the header's kid; without one (or when no key has it), the keys without kid.
	var candidates, kidless []verifyKey
	for _, k := range idp.keys {
		switch {
		case k.alg != alg:
		case kid == "" || k.kid == kid:
			candidates = append(candidates, k)
		case k.kid == "":
			kidless = append(kidless, k)
		}
	}
	if len(candidates) == 0 {
		candidates = kidless
	}
	if len(candidates) == 0 {
		if kid != "" {
			return jwtError(http.StatusUnauthorized, CodeBadSignature, "identity provider %s has no %s key with kid %q", idp.ID, alg, kid)
		}
		return jwtError(http.StatusUnauthorized, CodeBadSignature, "identity provider %s has no %s key", idp.ID, alg)
	}
	digest := sha256.Sum256([]byte(signingInput))
	for _, k := range candidates {
		if verifySignature(k, digest[:], sig) {
			return nil
		}
	}
	return jwtError(http.StatusUnauthorized, CodeBadSignature, "the id_token's %s signature does not verify with the keys of identity provider %s", alg, idp.ID)
}

func verifySignature(k verifyKey, digest, sig []byte) bool {
	switch k.alg {
	case AlgRS256:
		return rsa.VerifyPKCS1v15(k.rsa, crypto.SHA256, digest, sig) == nil
	case AlgES256:
		// JWS carries R || S, each 32 bytes (RFC 7518 section 3.4).
		if len(sig) != 64 {
			return false
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(k.ec, digest, r, s)
	default:
		return false
	}
}

func checkClaims(c *jwtClaims, idp *idpEntry, now time.Time) (string, *iamError) {
	if c.Iss != idp.Issuer {
		return "", jwtError(http.StatusUnauthorized, CodeWrongIssuer, "the id_token's iss %q is not the issuer of identity provider %s", c.Iss, idp.ID)
	}
	aud, err := audiences(c.Aud)
	if err != nil {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token's aud %v", err)
	}
	if !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(idp.ClientIDs, a) }) {
		return "", jwtError(http.StatusUnauthorized, CodeWrongAudience, "the id_token's aud %q does not contain a client ID of identity provider %s", aud, idp.ID)
	}
	if c.Exp == nil {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token has no exp claim")
	}
	exp, err := numericDate(*c.Exp)
	if err != nil {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token's exp %v", err)
	}
	if !now.Before(exp) {
		return "", jwtError(http.StatusUnauthorized, CodeJWTExpired, "the id_token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	for _, claim := range []struct {
		name string
		v    *json.Number
	}{{"nbf", c.Nbf}, {"iat", c.Iat}} {
		if claim.v == nil {
			continue
		}
		t, err := numericDate(*claim.v)
		if err != nil {
			return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token's %s %v", claim.name, err)
		}
		if t.After(now.Add(jwtLeeway)) {
			return "", jwtError(http.StatusUnauthorized, CodeJWTNotYetValid, "the id_token's %s %s is in the future", claim.name, t.UTC().Format(time.RFC3339))
		}
	}
	if c.Sub == "" {
		return "", jwtError(http.StatusUnauthorized, CodeMalformedJWT, "the id_token has no sub claim")
	}
	return c.Sub, nil
}

// audiences reads aud, a string or an array of strings.
func audiences(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errors.New("is missing")
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, errors.New("is neither a string nor an array of strings")
	}
	return many, nil
}

// numericDate reads a JWT NumericDate: seconds since the epoch, possibly fractional.
func numericDate(n json.Number) (time.Time, error) {
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e11 {
		return time.Time{}, errors.New("is not a NumericDate")
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}
