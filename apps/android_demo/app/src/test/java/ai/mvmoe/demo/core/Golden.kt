package ai.mvmoe.demo.core

import java.io.File

/**
 * apps/golden/golden.json, written by apps/golden/make_golden.py. Found through the system property
 * `mvmoe.golden` (tests/test_apps.py sets it) or relative to the Gradle module directory.
 */
object Golden {
    val root: Map<*, *> by lazy {
        val path = System.getProperty("mvmoe.golden") ?: "../../golden/golden.json"
        val f = File(path)
        check(f.isFile) { "golden file not found at ${f.absolutePath}; run apps/golden/make_golden.py" }
        Json.parse(f.readText(Charsets.UTF_8)) as Map<*, *>
    }
    val tolerance: Double get() = root["tolerance"] as Double

    @Suppress("UNCHECKED_CAST")
    fun list(key: String): List<Map<*, *>> = root[key] as List<Map<*, *>>

    fun doubles(m: Map<*, *>, key: String): List<Double> = (m[key] as List<*>).map { it as Double }
    fun floats(m: Map<*, *>, key: String): FloatArray = doubles(m, key).map { it.toFloat() }.toFloatArray()
    fun ints(m: Map<*, *>, key: String): List<Int> = doubles(m, key).map { it.toInt() }
}
