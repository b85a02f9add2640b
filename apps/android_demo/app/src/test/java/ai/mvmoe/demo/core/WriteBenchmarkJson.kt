package ai.mvmoe.demo.core

import java.io.File

/**
 * Test helper run by tests/test_apps.py: writes a contract-D file with [BenchmarkReport] so the
 * Python side can check that `mvmoe profile ingest` reads what the app writes.
 * Usage: WriteBenchmarkJsonKt OUT.json ms [ms ...]
 */
fun main(args: Array<String>) {
    val report = BenchmarkReport(
        artifact = "vmoe-6x64-p32_tflite_fp32.tflite", app = "android_demo", device = "JVM test (\"desktop\")",
        runtime = "litert", computeUnits = "cpu", threads = 2, warmup = 3,
        runsMs = args.drop(1).map { it.toDouble() }, created = "2026-11-23T09:00:00Z",
    )
    File(args[0]).writeText(report.toJson())
}
