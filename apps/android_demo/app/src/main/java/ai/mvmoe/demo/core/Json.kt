package ai.mvmoe.demo.core

/**
 * A small JSON reader and writer in plain Kotlin.
 *
 * Why not org.json: it ships with Android only, and this file must compile and be unit-tested with
 * plain kotlinc on the desktop. Values map to Kotlin types: object -> Map<String, Any?> (insertion
 * ordered), array -> List<Any?>, number -> Double, string -> String, true/false -> Boolean, null -> null.
 */
class JsonException(message: String) : IllegalArgumentException(message)

object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value()
        p.skipWs()
        if (p.pos != text.length) p.fail("trailing characters")
        return v
    }

    /** Serialise maps, lists, strings, numbers, booleans and null; NaN/Infinity are refused (not JSON). */
    fun write(value: Any?, indent: Int = 0): String = StringBuilder().also { emit(it, value, indent, 0) }.toString()

    private fun emit(sb: StringBuilder, v: Any?, indent: Int, level: Int) {
        when (v) {
            null -> sb.append("null")
            is String -> quote(sb, v)
            is Boolean -> sb.append(v)
            is Int, is Long -> sb.append(v)
            is Float -> number(sb, v.toDouble())
            is Double -> number(sb, v)
            is Map<*, *> -> container(sb, '{', '}', v.entries.toList(), indent, level) { e ->
                quote(sb, e.key.toString()); sb.append(if (indent > 0) ": " else ":"); emit(sb, e.value, indent, level + 1)
            }
            is List<*> -> container(sb, '[', ']', v, indent, level) { emit(sb, it, indent, level + 1) }
            is DoubleArray -> emit(sb, v.toList(), indent, level)
            is FloatArray -> emit(sb, v.map { it.toDouble() }, indent, level)
            is IntArray -> emit(sb, v.toList(), indent, level)
            else -> throw JsonException("cannot write ${v::class.simpleName} as JSON")
        }
    }

    private fun <T> container(sb: StringBuilder, open: Char, close: Char, items: List<T>, indent: Int, level: Int,
                              item: (T) -> Unit) {
        sb.append(open)
        items.forEachIndexed { i, x ->
            if (i > 0) sb.append(',')
            if (indent > 0) sb.append('\n').append(" ".repeat(indent * (level + 1)))
            item(x)
        }
        if (indent > 0 && items.isNotEmpty()) sb.append('\n').append(" ".repeat(indent * level))
        sb.append(close)
    }

    private fun number(sb: StringBuilder, d: Double) {
        if (d.isNaN() || d.isInfinite()) throw JsonException("cannot write $d as JSON")
        // Kotlin prints shortest round-trip digits ("1.5", "1.0E-5"): both are valid JSON numbers.
        sb.append(d.toString())
    }

    private fun quote(sb: StringBuilder, s: String) {
        sb.append('"')
        for (c in s) when (c) {
            '"' -> sb.append("\\\"")
            '\\' -> sb.append("\\\\")
            '\n' -> sb.append("\\n")
            '\r' -> sb.append("\\r")
            '\t' -> sb.append("\\t")
            else -> if (c < ' ') sb.append("\\u%04x".format(c.code)) else sb.append(c)
        }
        sb.append('"')
    }

    private class Parser(val s: String) {
        var pos = 0

        fun fail(msg: String): Nothing = throw JsonException("invalid JSON at offset $pos: $msg")

        fun skipWs() {
            while (pos < s.length && s[pos] in " \t\r\n") pos++
        }

        fun value(): Any? {
            if (pos >= s.length) fail("unexpected end")
            return when (val c = s[pos]) {
                '{' -> obj()
                '[' -> arr()
                '"' -> str()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> if (c == '-' || c.isDigit()) num() else fail("unexpected '$c'")
            }
        }

        private fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) fail("expected $word")
            pos += word.length
            return v
        }

        private fun obj(): Map<String, Any?> {
            val m = LinkedHashMap<String, Any?>()
            pos++
            skipWs()
            if (pos < s.length && s[pos] == '}') { pos++; return m }
            while (true) {
                skipWs()
                if (pos >= s.length || s[pos] != '"') fail("expected a key")
                val k = str()
                skipWs()
                if (pos >= s.length || s[pos] != ':') fail("expected ':'")
                pos++
                skipWs()
                m[k] = value()
                skipWs()
                if (pos >= s.length) fail("unterminated object")
                when (s[pos++]) {
                    ',' -> continue
                    '}' -> return m
                    else -> { pos--; fail("expected ',' or '}'") }
                }
            }
        }

        private fun arr(): List<Any?> {
            val a = ArrayList<Any?>()
            pos++
            skipWs()
            if (pos < s.length && s[pos] == ']') { pos++; return a }
            while (true) {
                skipWs()
                a.add(value())
                skipWs()
                if (pos >= s.length) fail("unterminated array")
                when (s[pos++]) {
                    ',' -> continue
                    ']' -> return a
                    else -> { pos--; fail("expected ',' or ']'") }
                }
            }
        }

        private fun str(): String {
            val sb = StringBuilder()
            pos++ // opening quote
            while (true) {
                if (pos >= s.length) fail("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (pos >= s.length) fail("unterminated escape")
                        when (val e = s[pos++]) {
                            '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000c'); 'n' -> sb.append('\n')
                            'r' -> sb.append('\r'); 't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) fail("short \\u escape")
                                val hex = s.substring(pos, pos + 4)
                                sb.append(hex.toIntOrNull(16)?.toChar() ?: fail("bad \\u escape '$hex'"))
                                pos += 4
                            }
                            else -> fail("bad escape '\\$e'")
                        }
                    }
                    c < ' ' -> fail("control character in string")
                    else -> sb.append(c)
                }
            }
        }

        private fun num(): Double {
            val start = pos
            if (s[pos] == '-') pos++
            while (pos < s.length && (s[pos].isDigit() || s[pos] in ".eE+-")) pos++
            return s.substring(start, pos).toDoubleOrNull() ?: fail("bad number '${s.substring(start, pos)}'")
        }
    }
}
