// Package wirefill fills a value of any type with non-zero data, for tests
// that compare the JSON of the protocol's types: a field left zero could
// hide behind omitempty, so every field gets a value.
package wirefill

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"time"
)

var (
	timeType     = reflect.TypeFor[time.Time]()
	prefixType   = reflect.TypeFor[netip.Prefix]()
	addrType     = reflect.TypeFor[netip.Addr]()
	addrPortType = reflect.TypeFor[netip.AddrPort]()
	rawType      = reflect.TypeFor[json.RawMessage]()
)

// Fill sets every exported field reachable from v (a pointer) to a
// non-zero value: strings "x", numbers 1, one element per slice and map,
// and valid times and addresses. Interface fields are left alone.
func Fill(v any) { fill(reflect.ValueOf(v).Elem(), 0) }

func fill(v reflect.Value, depth int) {
	if depth > 8 {
		return
	}
	switch v.Type() {
	case timeType:
		v.Set(reflect.ValueOf(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)))
		return
	case prefixType:
		v.Set(reflect.ValueOf(netip.MustParsePrefix("198.51.100.0/24")))
		return
	case addrType:
		v.Set(reflect.ValueOf(netip.MustParseAddr("203.0.113.7")))
		return
	case addrPortType:
		v.Set(reflect.ValueOf(netip.MustParseAddrPort("203.0.113.7:22")))
		return
	case rawType:
		v.Set(reflect.ValueOf(json.RawMessage(`[{"kind":"x"}]`)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem(), depth+1)
		v.Set(p)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(s.Index(0), depth+1)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, depth+1)
		fill(e, depth+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth+1)
			}
		}
	}
}
