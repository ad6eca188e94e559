package render

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"sigs.k8s.io/yaml"
)

// errTooLong stops the encoding of a value that would not fit in a ConfigMap.
var errTooLong = fmt.Errorf("the value encodes to more than the %d bytes a ConfigMap holds", MaxDataBytes)

// toJSON encodes a CEL value as JSON, map keys sorted, a key as in keys.json; and stops as soon
// as the output passes MaxDataBytes, so that a list holding one large value many times costs no
// more than one ConfigMap's worth.
func toJSON(v ref.Val) ([]byte, error) {
	var w jsonWriter
	if err := w.value(v); err != nil {
		return nil, err
	}
	return w.buf.Bytes(), nil
}

// toYAML encodes a CEL value as YAML, map keys sorted.
func toYAML(v ref.Val) ([]byte, error) {
	b, err := toJSON(v)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(b)
}

type jsonWriter struct {
	buf bytes.Buffer
}

func (w *jsonWriter) raw(b []byte) error {
	if w.buf.Len()+len(b) > MaxDataBytes {
		return errTooLong
	}
	w.buf.Write(b)
	return nil
}

func (w *jsonWriter) marshal(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return w.raw(b)
}

func (w *jsonWriter) value(v ref.Val) error {
	switch v := v.(type) {
	case types.String:
		return w.marshal(string(v))
	case types.Bool:
		return w.raw(strconv.AppendBool(nil, bool(v)))
	case types.Int:
		return w.raw(strconv.AppendInt(nil, int64(v), 10))
	case types.Uint:
		return w.raw(strconv.AppendUint(nil, uint64(v), 10))
	case types.Double:
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%v cannot be written as JSON", float64(v))
		}
		return w.marshal(float64(v))
	case types.Null:
		return w.raw([]byte("null"))
	case types.Bytes:
		return w.marshal(base64.StdEncoding.EncodeToString(v))
	case types.Timestamp:
		return w.marshal(v.UTC().Format(time.RFC3339Nano))
	case types.Duration:
		return w.marshal(v.String())
	case traits.Lister:
		return w.list(v)
	case traits.Mapper:
		return w.object(v)
	}
	if k, ok := v.Value().(Key); ok {
		return w.marshal(k)
	}
	return fmt.Errorf("a value of type %s cannot be written as JSON", v.Type().TypeName())
}

func (w *jsonWriter) list(l traits.Lister) error {
	if err := w.raw([]byte("[")); err != nil {
		return err
	}
	for i := range int(sizeOf(l)) {
		if i > 0 {
			if err := w.raw([]byte(",")); err != nil {
				return err
			}
		}
		if err := w.value(l.Get(types.Int(i))); err != nil {
			return err
		}
	}
	return w.raw([]byte("]"))
}

func (w *jsonWriter) object(m traits.Mapper) error {
	var keys []string
	for it := m.Iterator(); it.HasNext() == types.True; {
		k, ok := it.Next().(types.String)
		if !ok {
			return errors.New("a map with keys other than strings cannot be written as JSON")
		}
		keys = append(keys, string(k))
	}
	slices.Sort(keys)
	if err := w.raw([]byte("{")); err != nil {
		return err
	}
	for i, k := range keys {
		if i > 0 {
			if err := w.raw([]byte(",")); err != nil {
				return err
			}
		}
		if err := w.marshal(k); err != nil {
			return err
		}
		if err := w.raw([]byte(":")); err != nil {
			return err
		}
		if err := w.value(m.Get(types.String(k))); err != nil {
			return err
		}
	}
	return w.raw([]byte("}"))
}
