// Package render turns the keys of a listing into the content of a ConfigMap: the default
// entries, gzip-compressed when they would not fit otherwise, and the entries of a selector's
// CEL expressions, which run within a cost budget and a deadline.
package render

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"maps"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
)

// Render renders keys, sorted by id: by default one "<key_id>: <State>" entry per key and
// keys.json, compressed into keys.json.gz when the plain form would not fit; and the entries of
// exprs, which win on a clash or, with mergePolicy Replace, stand alone. exprs may be nil. It is
// deterministic, so the same keys give the same bytes. An error is a *KeyIDError,
// an *ExpressionError or a *TooLargeError.
func Render(ctx context.Context, keys []Key, exprs *Expressions) (Content, error) {
	data := map[string]string{}
	if !exprs.replaces() {
		var err error
		if data, err = defaultData(keys); err != nil {
			return Content{}, err
		}
	}
	entries, err := exprs.Eval(ctx, keys)
	if err != nil {
		return Content{}, err
	}
	maps.Copy(data, entries)
	c := Content{Data: data}
	if c.Fits() {
		return c, nil
	}
	if !exprs.Defines(kmsv1alpha1.KeysJSONKey) && data[kmsv1alpha1.KeysJSONKey] != "" && !exprs.Defines(kmsv1alpha1.KeysJSONGzipKey) {
		compressed, err := Gzip([]byte(data[kmsv1alpha1.KeysJSONKey]), gzip.BestCompression)
		if err != nil {
			return Content{}, err
		}
		delete(data, kmsv1alpha1.KeysJSONKey)
		c.BinaryData = map[string][]byte{kmsv1alpha1.KeysJSONGzipKey: compressed}
	}
	if !c.Fits() {
		return Content{}, &TooLargeError{Keys: len(keys), Size: c.Size(), StoredSize: c.StoredSize()}
	}
	return c, nil
}

// Rebuild renders again the content whose details (keys.json or keys.json.gz) stored holds,
// with exprs, so that a ConfigMap whose other entries were edited can be repaired without
// calling KMS.
func Rebuild(ctx context.Context, stored Content, exprs *Expressions) (Content, bool) {
	raw := []byte(stored.Data[kmsv1alpha1.KeysJSONKey])
	if gz, ok := stored.BinaryData[kmsv1alpha1.KeysJSONGzipKey]; ok {
		zr, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			return Content{}, false
		}
		if raw, err = io.ReadAll(io.LimitReader(zr, 64<<20)); err != nil {
			return Content{}, false
		}
	}
	var keys []Key
	if err := json.Unmarshal(raw, &keys); err != nil || keys == nil {
		return Content{}, false
	}
	c, err := Render(ctx, keys, exprs)
	return c, err == nil
}
